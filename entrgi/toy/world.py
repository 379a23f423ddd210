"""Where the shipped toy world lives: its checkpoints inside the package, its prompts in entrgi/data."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PARTS = {"dllm": "dream", "reward": "skywork"}
PROMPTS_FILE = "tiny_prompts.jsonl"


def weights_dir() -> Path:
    return Path(str(resources.files("entrgi.toy") / "weights"))


def prompts_path() -> Path:
    return Path(str(resources.files("entrgi") / "data" / PROMPTS_FILE))


def toy_world_path(part: str) -> Path:
    """The folder of the trained toy dLLM (`dllm`) or RM (`reward`), checked to be there."""
    if part not in PARTS:
        raise ValueError(f"toy world part {part!r} is not one of {', '.join(PARTS)}")
    folder = weights_dir() / PARTS[part]
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the toy world's {part} checkpoint is missing from {folder}; rebuild it with `python -m entrgi.toy.train`"
        )
    return folder
