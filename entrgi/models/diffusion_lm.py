"""The frozen masked diffusion LM: tokenizer, special ids and logits over a canvas.

Per-model semantics (mask id, logit shift, which transformers class holds the weights and
how the checkpoint's names map onto it) are config data, so the sampler never branches on
the model family. Dream-v0 ships Qwen2-layout weights behind remote code, LLaDA ships
Llama-layout weights under OLMo-style names; loading them into transformers' own classes
with the causal flag turned off gives the same networks without executing downloaded code.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
import transformers
from omegaconf import MISSING
from transformers import DynamicCache
from transformers.masking_utils import create_bidirectional_mask

from entrgi.schemas import schema
from entrgi.shapes import random_dllm, shaped_config
from entrgi.validation import ConfigError
from entrgi.weights import DType, resolve_checkpoint, resolve_device, resolve_dtype

# Keys of a remote-code config.json that must not reach transformers' own config class.
_REMOTE_CONFIG_KEYS = ("model_type", "auto_map", "architectures", "transformers_version")

# transformers 5.x renamed `past_key_values` to `cache` (the old name warns on every call).
_CACHE = "cache" if "cache" in inspect.signature(create_bidirectional_mask).parameters else "past_key_values"

# Per layer (keys, values) [N, heads, columns, head dim] of canvas columns a forward did not recompute.
KeysValues = list[tuple[torch.Tensor, torch.Tensor]]


class Decode(StrEnum):
    """`model.decode`: which tokens of the response region become the final text (`DiffusionLMConfig`)."""

    whole = "whole"
    to_stop = "to_stop"


class CacheMode(StrEnum):
    """`model.cache`: the keys/values a step inside a semi-autoregressive block reuses (`entrgi.models.block_cache`)."""

    none = "none"
    prefix = "prefix"
    dual = "dual"


@schema("model")
@dataclass
class DiffusionLMConfig:
    """The `model` config group."""

    _target_: str = "entrgi.models.DiffusionLM"
    path: str = MISSING
    backbone: str = "Qwen2ForCausalLM"
    config_keys: dict[str, str] = field(default_factory=dict)
    weight_keys: dict[str, str] = field(default_factory=dict)
    # config.json flags the backbone cannot express: {key: accepted values}; another value is refused.
    config_requires: dict[str, list[Any]] = field(default_factory=dict)
    tokenizer_class: str | None = None
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    stop_tokens: list[str] = field(default_factory=list)
    # Keyword arguments of the chat template (Qwen3's `enable_thinking`), and a template replacing the
    # checkpoint's own (for a checkpoint that ships none).
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    logit_shift: bool = True
    device: str = "auto"
    dtype: DType = DType.auto
    # The final text: the whole response region with special tokens skipped, text after a stop
    # token kept ("whole", the authors' script), or cut at the first stop token ("to_stop").
    decode: Decode = Decode.whole
    # config.json settings that replace the checkpoint's; when set, the network is built from the config
    # with random weights on the device instead of loaded (`entrgi.shapes`, experiment=gpu-shapes).
    shapes: dict[str, Any] = field(default_factory=dict)
    # Fast-dLLM's approximate key/value cache for block-wise schedules (`entrgi.models.block_cache`).
    cache: CacheMode = CacheMode.none


@schema("model", "hf")
@dataclass
class AnyDiffusionLMConfig(DiffusionLMConfig):
    """`model=hf`: any checkpoint of a known architecture; its backbone and logit shift must be given
    (no Dream defaults), the mask and EOS ids come from the checkpoint unless set."""

    backbone: str = MISSING
    logit_shift: bool = MISSING


class DiffusionLM:
    """Bidirectional logits of a masked diffusion LM, loaded with `from_pretrained` as its
    `DiffusionLMConfig` says. The config's fields:

        path: Hub id or local folder.
        backbone: transformers class whose weight layout the checkpoint has.
        config_keys: renames of the checkpoint's config.json keys to the backbone's.
        weight_keys: regex renames of the checkpoint's weight names to the backbone's
            (transformers' `key_mapping`).
        config_requires: {config.json key: accepted values} for flags of the checkpoint's format that
            the backbone cannot express (LLaDA's `scale_logits`, `input_emb_norm`, ...); a checkpoint
            that sets another value raises ConfigError.
        tokenizer_class: transformers tokenizer class to use instead of the one the
            checkpoint names (Dream names a remote-code class).
        mask_token_id, eos_token_id: override the ids in the checkpoint's config.json.
        stop_tokens: extra tokens that end a decoded response (e.g. end-of-turn), by name.
        chat_template_kwargs: keyword arguments of the chat template (Qwen3's `enable_thinking`).
        chat_template: a Jinja chat template used instead of the checkpoint's.
        logit_shift: position j reads the output at j-1 (Dream) or its own (LLaDA).
        decode: "whole" (the authors' script) or "to_stop" (cut at the first stop token).
        shapes: config.json settings that replace the checkpoint's, for a network with random weights
            built on the device (`entrgi.shapes`); the tokenizer still comes from `path`.
        cache: "none", or within a semi-autoregressive block reuse the keys/values of the columns
            before it ("prefix") or of all but the block ("dual"), `entrgi.models.block_cache`.
    """

    def __init__(self, config: DiffusionLMConfig):
        self.config = config
        folder = resolve_checkpoint(config.path, "model.path")
        self.device = resolve_device(config.device)
        raw = json.loads((folder / "config.json").read_text())
        for key, accepted in (config.config_requires or {}).items():
            if key in raw and raw[key] not in list(accepted):
                raise ConfigError(
                    f"model.path={config.path!r} sets {key}={raw[key]!r} in config.json, which "
                    f"model.backbone={config.backbone} cannot express (model.config_requires.{key}: {list(accepted)})"
                )
        model_cls = getattr(transformers, config.backbone)
        renames = dict(config.config_keys or {})
        settings = {k: v for k, v in raw.items() if k not in _REMOTE_CONFIG_KEYS and k not in renames.values()}
        settings.update({new: raw[old] for old, new in renames.items() if old in raw})
        dtype = resolve_dtype(config.dtype, self.device)
        if config.shapes:
            shaped = shaped_config(model_cls.config_class, settings, config.shapes)
            self.network = random_dllm(model_cls, shaped, self.device, dtype)
            loading = {"missing_keys": set(), "unexpected_keys": set()}
        else:
            self.network, loading = model_cls.from_pretrained(
                folder,
                config=model_cls.config_class(**settings),
                key_mapping=dict(config.weight_keys) if config.weight_keys else None,
                dtype=dtype,
                output_loading_info=True,
            )
        # transformers initialises missing weights at random and only warns: refuse instead.
        unmatched = sorted(loading["missing_keys"] | loading["unexpected_keys"])
        if unmatched:
            raise ValueError(
                f"model.path={config.path!r} does not fit model.backbone={config.backbone} with the given "
                f"model.weight_keys: "
                f"{len(unmatched)} weights unmatched, e.g. {', '.join(unmatched[:3])}"
            )
        self.network.to(self.device).eval().requires_grad_(False)
        for module in self.network.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False

        tok_cls = transformers.AutoTokenizer
        if config.tokenizer_class:
            tok_cls = getattr(transformers, config.tokenizer_class)
        self.tokenizer = tok_cls.from_pretrained(folder)
        if config.chat_template:
            self.tokenizer.chat_template = config.chat_template
        tokens = special_tokens(config, raw, self.tokenizer)
        self.mask_token_id, self.eos_token_id, self.pad_token_id = tokens.mask, tokens.eos, tokens.pad
        self.stop_token_ids = tokens.stops
        self.logit_shift = config.logit_shift
        self.vocab_size = self.network.get_output_embeddings().weight.shape[0]

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of the prompt in the model's chat template, ready for the response."""
        return encode_prompt(self.tokenizer, prompt, self.config.chat_template_kwargs)

    def decode(self, response_ids: list[int]) -> str:
        """Text of a response, special tokens skipped: all of it (`decode="whole"`, the authors' script:
        text after a stop token is kept) or up to, not including, its first stop token ("to_stop")."""
        stops = set(self.stop_token_ids) if self.config.decode == "to_stop" else set()
        cut = next((i for i, tok in enumerate(response_ids) if tok in stops), len(response_ids))
        return self.tokenizer.decode(response_ids[:cut], skip_special_tokens=True)

    @torch.no_grad()
    def logits(self, canvas: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """Float32 logits [N, S - start, V] for canvas positions start..S-1.

        Attention is bidirectional with padding hidden on the key side; positions count
        real tokens only, so left padding does not move a prompt. The LM head runs only
        where logits are needed.
        """
        return self.differentiable_logits(canvas, attention_mask, start)

    def differentiable_logits(self, canvas: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """`logits` with autograd left on, so a dLLM is trained through the very forward that samples
        from it (the toy world's dLLM, `entrgi.toy`)."""
        width = canvas.shape[1]
        return self._forward(canvas, attention_mask, (0, width), (start, width))[0]

    @torch.no_grad()
    def window_logits(
        self, canvas: torch.Tensor, attention_mask: torch.Tensor, queries: tuple[int, int], positions: tuple[int, int],
        past: tuple[KeysValues, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KeysValues]:
        """Float32 logits [N, p1 - p0, V] of canvas positions `positions` = (p0, p1) from a forward over the
        columns `queries` = (q0, q1) only, and the keys/values of that forward per layer, [past | q0..q1-1].

        The queries attend to each other and to `past`: the keys/values of other columns (their positions
        already applied) and those columns' key mask [N, P], in the same order. Exactly `logits` when
        `queries` is the whole canvas and `past` None. With the logit shift, p0 - 1 >= q0 (position p0 reads
        the output at p0 - 1; position 0 its own) and p1 <= q1 + 1; without, q0 <= p0 and p1 <= q1.
        """
        return self._forward(canvas, attention_mask, queries, positions, past, keep=True)

    def _forward(self, canvas, attention_mask, queries, positions, past=None, keep=False):
        (q0, q1), (p0, p1) = queries, positions
        embeds = self.network.get_input_embeddings()(canvas[:, q0:q1])
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, q0:q1]
        cache = DynamicCache(past[0]) if past is not None else (DynamicCache() if keep else None)
        keys = attention_mask[:, q0:q1] if past is None else torch.cat([past[1], attention_mask[:, q0:q1]], dim=1)
        # A prepared (4-D) mask is used as given by every decoder class; never skipped, because
        # "no mask" would make the decoder fall back to its causal default.
        mask = create_bidirectional_mask(
            config=self.network.config, inputs_embeds=embeds, attention_mask=keys,
            allow_is_bidirectional_skip=False, **{_CACHE: cache},
        )
        out = self.network.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=keep, **{_CACHE: cache},
        )
        hidden = out.last_hidden_state
        if self.logit_shift and p0 == 0:  # position 0 keeps its own output under the shift
            hidden = torch.cat([hidden[:, :1], hidden[:, : p1 - 1 - q0]], dim=1)
        else:
            shift = int(self.logit_shift)
            hidden = hidden[:, p0 - shift - q0 : p1 - shift - q0]
        logits = self.network.get_output_embeddings()(hidden).float()
        return logits, ([(k, v) for k, v, *_ in getattr(out, _CACHE)] if keep else [])

def encode_prompt(tokenizer, prompt: str, template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
    """Token ids of `prompt` in the dLLM's chat template (called with `template_kwargs`, e.g.
    `enable_thinking=False`), ready for the response (also checked before loading)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, **dict(template_kwargs or {}))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class SpecialTokens:
    """The ids a dLLM's sampler needs (`special_tokens`)."""

    mask: int
    eos: int
    pad: int
    stops: list[int]  # EOS and the stop tokens, sorted


def special_tokens(config: DiffusionLMConfig, raw: Mapping[str, Any], tokenizer) -> SpecialTokens:
    """Mask, EOS, pad and stop ids from `config` first, then the checkpoint's config.json (`raw`), then its
    tokenizer. Raises ConfigError naming the key to set when the mask or EOS id is found nowhere, an id is
    outside the vocabulary, or a stop token is not in the tokenizer; checked before the weights load
    (`entrgi.preflight`) and again at load."""
    vocab = tokenizer.get_vocab()
    mask = _first_set(config.mask_token_id, raw.get("mask_token_id"), tokenizer.mask_token_id)
    eos = _first_set(config.eos_token_id, _single(raw.get("eos_token_id")), tokenizer.eos_token_id)
    for key, value, what in (("mask_token_id", mask, "mask token"), ("eos_token_id", eos, "EOS token")):
        if value is None:
            raise ConfigError(f"model.{key} is not set and model.path={config.path!r} defines no {what} "
                              f"(config.json {key}, tokenizer): give model.{key}=<id>")
    size = max(len(tokenizer), int(raw.get("vocab_size") or 0))
    for key, value in (("mask_token_id", mask), ("eos_token_id", eos)):
        if not 0 <= value < size:
            raise ConfigError(f"model.{key}={value} is outside the vocabulary of model.path={config.path!r} "
                              f"({size} ids)")
    unknown = [t for t in config.stop_tokens if t not in vocab]
    if unknown:
        raise ConfigError(f"model.stop_tokens: {unknown} not in the tokenizer of model.path={config.path!r}")
    pad = _first_set(raw.get("pad_token_id"), tokenizer.pad_token_id, eos)
    stops = tokenizer.convert_tokens_to_ids(list(config.stop_tokens))
    return SpecialTokens(mask=mask, eos=eos, pad=pad, stops=sorted({eos, *stops}))


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def _single(value):
    """config.json may list several EOS ids; the first is the one that pads."""
    return value[0] if isinstance(value, list) else value
