"""The frozen masked diffusion LM: tokenizer, special ids and logits over a canvas.

Per-model semantics (mask id, logit shift, which transformers class holds the weights and
how the checkpoint's names map onto it) are config data, so the sampler never branches on
the model family. Dream-v0 ships Qwen2-layout weights behind remote code, LLaDA ships
Llama-layout weights under OLMo-style names; loading them into transformers' own classes
with the causal flag turned off gives the same networks without executing downloaded code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
import transformers
from omegaconf import MISSING
from transformers.masking_utils import create_bidirectional_mask

from entrgi.checkpoints import resolve_checkpoint, resolve_device, resolve_dtype
from entrgi.validation import one_of

# Keys of a remote-code config.json that must not reach transformers' own config class.
_REMOTE_CONFIG_KEYS = ("model_type", "auto_map", "architectures", "transformers_version")


@dataclass
class DiffusionLMConfig:
    """The `model` config group."""

    _target_: str = "entrgi.models.DiffusionLM"
    path: str = MISSING
    backbone: str = "Qwen2ForCausalLM"
    config_keys: dict[str, str] = field(default_factory=dict)
    weight_keys: dict[str, str] = field(default_factory=dict)
    tokenizer_class: str | None = None
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    stop_tokens: list[str] = field(default_factory=list)
    logit_shift: bool = True
    device: str = "auto"
    dtype: str = one_of("auto", "auto", "bfloat16", "float16", "float32")


class DiffusionLM:
    """Bidirectional logits of a masked diffusion LM, loaded with `from_pretrained`.

    Args:
        path: Hub id or local folder.
        backbone: transformers class whose weight layout the checkpoint has.
        config_keys: renames of the checkpoint's config.json keys to the backbone's.
        weight_keys: regex renames of the checkpoint's weight names to the backbone's
            (transformers' `key_mapping`).
        tokenizer_class: transformers tokenizer class to use instead of the one the
            checkpoint names (Dream names a remote-code class).
        mask_token_id, eos_token_id: override the ids in the checkpoint's config.json.
        stop_tokens: extra tokens that end a decoded response (e.g. end-of-turn), by name.
        logit_shift: position j reads the output at j-1 (Dream) or its own (LLaDA).
    """

    def __init__(
        self,
        path: str,
        backbone: str = "Qwen2ForCausalLM",
        config_keys: dict[str, str] | None = None,
        weight_keys: dict[str, str] | None = None,
        tokenizer_class: str | None = None,
        mask_token_id: int | None = None,
        eos_token_id: int | None = None,
        stop_tokens: list[str] | tuple[str, ...] = (),
        logit_shift: bool = True,
        device: str = "auto",
        dtype: str = "auto",
    ):
        folder = resolve_checkpoint(path, "model.path")
        self.device = resolve_device(device)
        raw = json.loads((folder / "config.json").read_text())
        model_cls = getattr(transformers, backbone)
        renames = dict(config_keys or {})
        settings = {k: v for k, v in raw.items() if k not in _REMOTE_CONFIG_KEYS and k not in renames.values()}
        settings.update({new: raw[old] for old, new in renames.items() if old in raw})
        self.network, loading = model_cls.from_pretrained(
            folder,
            config=model_cls.config_class(**settings),
            key_mapping=dict(weight_keys) if weight_keys else None,
            dtype=resolve_dtype(dtype, self.device),
            output_loading_info=True,
        )
        # transformers initialises missing weights at random and only warns: refuse instead.
        unmatched = sorted(loading["missing_keys"] | loading["unexpected_keys"])
        if unmatched:
            raise ValueError(
                f"model.path={path!r} does not fit model.backbone={backbone} with the given model.weight_keys: "
                f"{len(unmatched)} weights unmatched, e.g. {', '.join(unmatched[:3])}"
            )
        self.network.to(self.device).eval().requires_grad_(False)
        for module in self.network.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False

        tok_cls = getattr(transformers, tokenizer_class) if tokenizer_class else transformers.AutoTokenizer
        self.tokenizer = tok_cls.from_pretrained(folder)
        self.mask_token_id = _first_set(mask_token_id, raw.get("mask_token_id"), self.tokenizer.mask_token_id)
        self.eos_token_id = _first_set(eos_token_id, _single(raw.get("eos_token_id")), self.tokenizer.eos_token_id)
        self.pad_token_id = _first_set(raw.get("pad_token_id"), self.tokenizer.pad_token_id, self.eos_token_id)
        if self.mask_token_id is None:
            raise ValueError(f"model.mask_token_id is not set and {path} defines no mask token")
        unknown = [t for t in stop_tokens if t not in self.tokenizer.get_vocab()]
        if unknown:
            raise ValueError(f"model.stop_tokens: {unknown} not in the tokenizer of {path}")
        self.stop_token_ids = sorted({self.eos_token_id, *self.tokenizer.convert_tokens_to_ids(list(stop_tokens))})
        self.logit_shift = logit_shift
        self.vocab_size = self.network.get_output_embeddings().weight.shape[0]

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of the prompt in the model's chat template, ready for the response."""
        return encode_prompt(self.tokenizer, prompt)

    def decode(self, response_ids: list[int]) -> str:
        """Text of a response up to (not including) its first stop token."""
        stops = set(self.stop_token_ids)
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
        embeds = self.network.get_input_embeddings()(canvas)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        # A prepared (4-D) mask is used as given by every decoder class; never skipped, because
        # "no mask" would make the decoder fall back to its causal default.
        mask = create_bidirectional_mask(
            config=self.network.config, inputs_embeds=embeds, attention_mask=attention_mask,
            allow_is_bidirectional_skip=False,
        )
        hidden = self.network.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids
        ).last_hidden_state
        first = start - 1 if self.logit_shift else start
        last = hidden.shape[1] - 1 if self.logit_shift else hidden.shape[1]
        if first < 0:  # position 0 keeps its own output under the shift
            hidden = torch.cat([hidden[:, :1], hidden[:, :last]], dim=1)
        else:
            hidden = hidden[:, first:last]
        return self.network.get_output_embeddings()(hidden).float()


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` in the dLLM's chat template, ready for the response (also checked before loading)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def _single(value):
    """config.json may list several EOS ids; the first is the one that pads."""
    return value[0] if isinstance(value, list) else value
