"""Networks at a checkpoint's shapes with random weights, built directly on the device.

For measuring time and memory at the paper's shapes (`experiment=gpu-shapes`: Dream-7B and the
Skywork-Reward-V2-Qwen3 sizes) without downloading 30 GB: `model.shapes` / `reward.shapes` name
the config.json settings (hidden size, layers, heads, vocabulary rows, ...) that replace those of
the folder at `model.path` / `reward.path`, which then only supplies the tokenizer and the rest of
the config. Nothing is read from its weights.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from entrgi.random_world import NOISE, ZIPF, peak_distributions
from entrgi.validation import ConfigError


def shaped_config(config_cls: type[PretrainedConfig], settings: dict[str, Any], shapes: dict[str, Any]
                  ) -> PretrainedConfig:
    """`config_cls` of a checkpoint's config.json `settings` with `shapes` replacing them. A per-layer list
    that a new layer count would contradict (`layer_types`) is dropped, so the config derives it again."""
    merged = {**settings, **shapes}
    if "num_hidden_layers" in shapes and "layer_types" not in shapes:
        merged.pop("layer_types", None)
    return config_cls(**merged)


def random_network(model_cls, config: PretrainedConfig, device: torch.device, dtype: torch.dtype,
                   trust_remote_code: bool = False) -> PreTrainedModel:
    """`model_cls` (a transformers model class, or an Auto class) of `config`, its weights allocated and
    initialised at random on `device` in `dtype` (no CPU copy, no checkpoint). `trust_remote_code` is passed
    to an Auto class (`reward.trust_remote_code`)."""
    with torch.device(device):
        if hasattr(model_cls, "from_config"):  # an Auto class
            return model_cls.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        return model_cls._from_config(config, dtype=dtype)


def random_dllm(model_cls, config: PretrainedConfig, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """A dLLM network of `config` built by `random_network`, with distributions as peaked as a trained
    model's (`entrgi.random_world.peak_distributions`; a Qwen2 or Llama layout): random weights at a
    152k vocabulary would give near-uniform ones, whose top-p nucleus is most of the vocabulary.

    Every embedding row is ranked like a token, those past the tokenizer included: a draw may land
    there, which decodes to nothing and reaches the RM as its unknown (or EOS) token.
    """
    network = random_network(model_cls, config, device, dtype)
    layers = getattr(getattr(network, "model", None), "layers", [])
    if not all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers) or not layers:
        raise ConfigError(f"model.shapes: a random dLLM needs a Qwen2, Qwen3 or Llama layout (model.layers[i]."
                          f"self_attn, .mlp) for its peaked distributions; model.backbone={type(network).__name__} "
                          "has another")
    peak_distributions(network, config.vocab_size, ZIPF, NOISE)
    return network
