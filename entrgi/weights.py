"""Finding model weights: a local folder, the Hugging Face cache, or the Hub when reachable.

A missing 7B checkpoint must fail in seconds with a message that says what to do, not after
half a minute of HTTP retries or after another model has been loaded.
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

# What a model folder needs; skips optimizer states, other formats and README images.
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


class DType(StrEnum):
    """Weight dtype of a loaded model (`model.dtype`, `reward.dtype`, an evaluator's `dtype`);
    `auto` is bfloat16 on accelerators and float32 on the CPU (`resolve_dtype`)."""

    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class ResourceUnavailable(RuntimeError):
    """Weights or data named by a config key cannot be found or fetched; the message says how."""


class WeightsUnavailable(ResourceUnavailable):
    """The weights named by a config key cannot be found or fetched."""


def hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_checkpoint(name_or_path: str, key: str, marker: str = "config.json") -> Path:
    """Return a local folder holding `name_or_path`, downloading only when the Hub is reachable.

    `marker` is the file that a folder of this kind must hold (adapter_config.json for PEFT).
    """
    local = Path(os.path.expanduser(name_or_path))
    if local.is_dir():
        if not (local / marker).is_file():
            raise WeightsUnavailable(f"{key}={name_or_path!r} is a folder without {marker}")
        return local
    if local.is_absolute() or name_or_path.startswith("."):
        raise WeightsUnavailable(f"{key}={name_or_path!r}: no such folder")
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=_WEIGHT_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub is unreachable"
        raise WeightsUnavailable(
            f"{key}={name_or_path!r} is not a local folder nor in the Hugging Face cache, and {why}. "
            f"Fetch it where the Hub is reachable (`hf download {name_or_path}`) and copy the cache "
            f"over, or set {key}=/path/to/folder; for the offline tiny setup run with experiment=tiny."
        )
    return Path(snapshot_download(name_or_path, allow_patterns=_WEIGHT_PATTERNS))


def resolve_device(device: str) -> torch.device:
    """`auto` means the current CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: DType | str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on accelerators (the paper's setting) and float32 on the CPU.

    Raises ValueError for a name that is not a `DType`."""
    dtype = DType(dtype)
    if dtype is DType.auto:
        return torch.bfloat16 if device.type != "cpu" else torch.float32
    return getattr(torch, dtype.value)
