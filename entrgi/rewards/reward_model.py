"""The frozen reward model: a sequence classifier with one output (Skywork-Reward-V2 style).

Two ways in. Final scores go through the standard discrete path: the decoded response
rendered in the RM's own chat template, tokenised, batched. Guidance goes through the
embedding path: [template prefix | response embeddings | template suffix], differentiable
in the response embeddings, pooled at the true last real position (transformers cannot see
padding in `inputs_embeds` and would pool position -1).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import torch
import transformers
from omegaconf import MISSING
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from entrgi.compute import ComputeLedger
from entrgi.schemas import schema
from entrgi.shapes import random_network, shaped_config
from entrgi.validation import ranged
from entrgi.weights import DType, resolve_checkpoint, resolve_device, resolve_dtype


class Positions(StrEnum):
    """`reward.positions`: the position ids of the embedding path (`RewardModelConfig`)."""

    absolute = "absolute"
    visible = "visible"


class HideFrom(StrEnum):
    """`reward.hide_from`: where the guidance RM input stops showing the response (`RewardModelConfig`)."""

    eos = "eos"
    stop = "stop"


class TextPath(StrEnum):
    """`reward.text_path`: how the final scores turn a response into RM input (`RewardModelConfig`)."""

    template = "template"
    splice = "splice"


class Bridge(StrEnum):
    """`reward.bridge`: what the RM reads for a dLLM token with no exact match (`entrgi.rewards.vocab_bridge`)."""

    exact = "exact"
    retokenize = "retokenize"


@dataclass
class RewardReading:
    """How a reward model reads a response: the `reward` keys the `fidelity` overlays set (see the README).

    Every option of the `reward` group has them, so a fidelity composes with any reward. A text
    scorer (`entrgi.rewards.text`) reads the decoded response, which `model.decode` (also set by the
    fidelity) decides, and nothing else: they change nothing there. An RM term of `reward=sum` reads
    as its own keys say (`reward.rewards.<name>.text_path`); the shipped sum's RM term follows the sum's.
    """

    # positions of the embedding path: "absolute" = every column occupies a position, hidden ones
    # and padding included, as when no position ids are passed (the authors' script); "visible" =
    # contiguous over the visible tokens.
    positions: Positions = Positions.absolute
    # the guidance RM input hides the response from its first "eos" (the reference) or its first
    # "stop" token (every stop token of the dLLM).
    hide_from: HideFrom = HideFrom.eos
    # final scores: the decoded text rendered by the RM's chat template ("template", which may
    # strip leading newlines or split off a think block), or the template rendered around a
    # placeholder with the text's tokens spliced in verbatim ("splice": the very token
    # sequence the embedding path is built from).
    text_path: TextPath = TextPath.template


@schema("reward")
@dataclass
class RewardModelConfig(RewardReading):
    """The `reward` config group's reward models (`classifier`, the Skywork presets, `tiny`)."""

    _target_: str = "entrgi.rewards.RewardModel"
    path: str = MISSING
    # Run the checkpoint's own Python code (config.json's auto_map, or a model type transformers does not
    # know): never by default; a checkpoint that needs it is refused before loading, naming this key.
    trust_remote_code: bool = False
    # What guidance feeds the RM for a dLLM token with no exact match (`entrgi.rewards.vocab_bridge`).
    bridge: Bridge = Bridge.exact
    adapter_path: str | None = None
    tokenizer_class: str | None = None
    batch_size: int = ranged(8, low=1)
    gradient_checkpointing: bool = False
    prefix_cache: bool = True
    device: str = "auto"
    dtype: DType = DType.auto
    # config.json settings that replace the checkpoint's; when set, the network is built from the config
    # with random weights on the device instead of loaded (`entrgi.shapes`, experiment=gpu-shapes).
    shapes: dict[str, Any] = field(default_factory=dict)


# transformers 5.x renamed `past_key_values` to `cache` (the old name warns on every call).
_CACHE = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"

# Stands in for the response while the chat template is rendered, then split on.
_PLACEHOLDER = "\u2063ENTRGI_RESPONSE\u2063"


@dataclass
class RewardInputLayout:
    """The constant parts of the RM input for one batch: [left pad | prefix | response | suffix | right pad].

    The response occupies the same L columns in every row, so the RM input is a
    concatenation. The prefix (template and prompt) never changes during a batch: with the
    prefix cache its keys/values are computed here once, and every RM pass runs over the
    response and suffix only.
    """

    prefix_embeds: torch.Tensor  # [N, P, d], zeros at padding
    suffix_embeds: torch.Tensor  # [N, S, d]
    prefix_real: torch.Tensor  # [N, P] bool
    suffix_real: torch.Tensor  # [N, S] bool
    prefix_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (keys, values), no grad
    precomputed: tuple[int, int] = (0, 0)  # (rows, width) of the forward that computed the cache
    suffix_ids: torch.Tensor | None = None  # [N, S] long RM ids of the suffix (0 at padding)
    prefix_last: torch.Tensor | None = None  # [N, d] final hidden state at the last prefix column, with the cache

    def pass_width(self, response_length: int) -> int:
        """Columns an RM pass over responses of `response_length` computes (`entrgi.compute`): the prefix
        only without the cache, then the response and the suffix."""
        prefix = 0 if self.prefix_cache is not None else self.prefix_real.shape[1]
        return prefix + response_length + self.suffix_real.shape[1]


class RewardModel:
    """Scores (prompt, response) pairs with a frozen `AutoModelForSequenceClassification`.

    A `TextReward` (`score_texts`, the final scores) that is also differentiable: its embedding path
    (`layout`, `score_embeds`) is what gradient guidance and fk's device path read.
    """

    differentiable: ClassVar[bool] = True
    # Whether `score_embeds` also reads the response's token ids (`targets`): a classifier reads embeddings only.
    reads_tokens: ClassVar[bool] = False
    # The frozen network: a transformers Auto class and its `from_pretrained` options (a one-label classifier here).
    network_class: ClassVar[type] = transformers.AutoModelForSequenceClassification
    load_options: ClassVar[dict[str, Any]] = {"num_labels": 1}

    def __init__(self, config: RewardModelConfig):
        """Load the classifier its `RewardModelConfig` names. The config's fields:

            path: Hub id or local folder of the sequence classifier (one label, a chat template).
            trust_remote_code: run the checkpoint's own code (refused by preflight unless set).
            bridge: what guidance feeds the RM for a dLLM token it has no exact match for.
            adapter_path: a PEFT (LoRA) adapter trained on top of it, merged in at load.
            batch_size: conversations per forward pass on the text path.
            gradient_checkpointing: recompute RM activations in the backward pass of guidance,
                trading time for memory (the RM backward dominates guidance memory).
            prefix_cache: compute the keys/values of the template prefix and prompt once per
                batch instead of in every RM pass (not combined with checkpointing).
            positions, hide_from, text_path: how the RM reads a response (`RewardModelConfig`).
            shapes: config.json settings that replace the checkpoint's, for a network with random
                weights built on the device (`entrgi.shapes`); the tokenizer still comes from `path`.
        """
        self.config = config
        folder = resolve_checkpoint(config.path, "reward.path")
        self.device = resolve_device(config.device)
        dtype, remote = resolve_dtype(config.dtype, self.device), config.trust_remote_code
        if config.shapes:
            checkpoint = transformers.AutoConfig.from_pretrained(folder, **self.load_options, trust_remote_code=remote)
            shaped = shaped_config(type(checkpoint), checkpoint.to_dict(), config.shapes)
            self.network = random_network(self.network_class, shaped, self.device, dtype, trust_remote_code=remote)
        else:
            self.network = self.network_class.from_pretrained(folder, **self.load_options, dtype=dtype,
                                                              trust_remote_code=remote)
        if config.adapter_path:
            self.network = _merge_adapter(self.network, config.adapter_path)
        self.network.to(self.device).eval().requires_grad_(False)
        if config.gradient_checkpointing:
            # transformers only checkpoints in training mode; the RM has no dropout to switch on.
            enable = getattr(self.network, "activation_checkpointing_enable", None)  # newer transformers name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.network.train()
        tok_cls = transformers.AutoTokenizer
        if config.tokenizer_class:
            tok_cls = getattr(transformers, config.tokenizer_class)
        self.tokenizer = tok_cls.from_pretrained(folder, trust_remote_code=config.trust_remote_code)
        if self.network.config.pad_token_id is None:  # batched pooling needs it
            self.network.config.pad_token_id = self.tokenizer.pad_token_id

    def render(self, prompt: str, response: str) -> str:
        """The conversation as the RM was trained to read it."""
        return render(self.tokenizer, prompt, response)

    @property
    def embedding_table(self) -> torch.Tensor:
        return self.network.get_input_embeddings().weight

    def template_parts(self, prompt: str) -> list[list[int]]:
        """Token ids of the rendered template before and after the assistant's response."""
        return template_parts(self.tokenizer, prompt)

    @torch.no_grad()
    def layout(self, prompts: list[str], num_samples: int, response_length: int) -> RewardInputLayout:
        """The constant part of the RM input for prompts repeated K times (prompt-major rows)."""
        parts = [self.template_parts(p) for p in prompts]
        prefix_width = max(len(prefix) for prefix, _ in parts)
        suffix_width = max(len(suffix) for _, suffix in parts)
        prefix_ids = [[0] * (prefix_width - len(pre)) + pre for pre, _ in parts]
        suffix_ids = [suf + [0] * (suffix_width - len(suf)) for _, suf in parts]
        prefix_real = [[False] * (prefix_width - len(pre)) + [True] * len(pre) for pre, _ in parts]
        suffix_real = [[True] * len(suf) + [False] * (suffix_width - len(suf)) for _, suf in parts]

        def embed(ids, real):
            real = torch.tensor(real, device=self.device, dtype=torch.bool).reshape(len(parts), -1)
            ids = torch.tensor(ids, device=self.device, dtype=torch.long).reshape(len(parts), -1)
            return self.network.get_input_embeddings()(ids) * real.unsqueeze(-1), real

        prefix_embeds, prefix_mask = embed(prefix_ids, prefix_real)
        suffix_embeds, suffix_mask = embed(suffix_ids, suffix_real)
        cache, precomputed, prefix_last = None, (0, 0), None
        # A row whose suffix is empty may be pooled inside the prefix; checkpointing recomputes
        # layers and would append to the cache twice: both take the uncached path.
        cached = self.config.prefix_cache and not self.config.gradient_checkpointing
        if cached and suffix_width and all(suf for _, suf in parts):
            positions = self._positions(prefix_mask)
            out = self.network.base_model(
                inputs_embeds=prefix_embeds, attention_mask=self._mask(prefix_embeds, prefix_mask, positions),
                position_ids=positions, use_cache=True, **{_CACHE: DynamicCache()},
            )
            cache = [
                (keys.repeat_interleave(num_samples, 0), values.repeat_interleave(num_samples, 0))
                for keys, values, *_ in getattr(out, _CACHE)
            ]
            precomputed = tuple(prefix_embeds.shape[:2])
            prefix_last = out.last_hidden_state[:, -1].repeat_interleave(num_samples, 0)

        def per_sample(tensor):
            return tensor.repeat_interleave(num_samples, 0)

        return RewardInputLayout(
            per_sample(prefix_embeds), per_sample(suffix_embeds), per_sample(prefix_mask), per_sample(suffix_mask),
            cache, precomputed,
            per_sample(torch.tensor(suffix_ids, device=self.device, dtype=torch.long).reshape(len(parts), -1)),
            prefix_last,
        )

    def _positions(self, visible: torch.Tensor) -> torch.Tensor:
        """Position ids [N, S] of an RM input whose visible columns are `visible` [N, S]."""
        if self.config.positions == "absolute":
            return torch.arange(visible.shape[1], device=visible.device).expand(visible.shape)
        return (visible.long().cumsum(-1) - 1).clamp(min=0)

    def _mask(self, embeds, visible, positions, past=None):
        """The causal + padding mask, always materialised: deciding to skip it reads the GPU.

        Every query also sees its own key. That changes nothing for visible positions, and
        padding or hidden positions (whose outputs nobody reads) no longer have an empty row,
        which some fused attention kernels turn into NaN that then leaks through the backward.
        """
        mask = create_causal_mask(
            config=self.network.config, inputs_embeds=embeds, attention_mask=visible,
            position_ids=positions, allow_is_causal_skip=False, **{_CACHE: past},
        )
        if not (torch.is_tensor(mask) and mask.dim() == 4):
            return mask
        queries, keys = mask.shape[-2:]
        rows = torch.arange(queries, device=mask.device)[:, None] + (keys - queries)
        diagonal = rows == torch.arange(keys, device=mask.device)[None, :]
        return mask | diagonal if mask.dtype == torch.bool else mask.masked_fill(diagonal, 0.0)

    def score_embeds(
        self, layout: RewardInputLayout, response_embeds: torch.Tensor, response_visible: torch.Tensor,
        targets=None,
    ) -> torch.Tensor:
        """Differentiable float32 scores [N] of responses given as embeddings [N, L, d].

        `targets` (the response's tokens, `entrgi.rewards.ar_likelihood.ResponseTargets`) is read by a
        reward with `reads_tokens` only; a classifier ignores it.

        `response_visible` [N, L] hides response positions from the RM (after the first EOS).
        With `positions="visible"` positions count visible tokens only, as if hidden ones were not
        there; with "absolute" every column has its index as position, as when the authors' script
        calls the RM without position ids. Each row is pooled at its last visible position.
        """
        hidden, visible, offset = self.hidden_states(layout, response_embeds, response_visible)
        last = (visible.long() * torch.arange(visible.shape[1], device=visible.device)).argmax(-1) - offset
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.network.score(pooled)[:, 0].float()

    def hidden_states(self, layout: RewardInputLayout, response_embeds: torch.Tensor, response_visible: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The base network's final hidden states over [prefix | response | suffix] (the prefix left out when
        cached): (hidden [N, S - offset, d], visible [N, S] bool over all columns, offset = columns left out)."""
        dtype = layout.prefix_embeds.dtype
        visible = torch.cat([layout.prefix_real, response_visible, layout.suffix_real], dim=1)
        positions = self._positions(visible)
        if layout.prefix_cache is None:
            offset, past = 0, None
            embeds = torch.cat([layout.prefix_embeds, response_embeds.to(dtype), layout.suffix_embeds], dim=1)
        else:
            offset, past = layout.prefix_real.shape[1], DynamicCache(layout.prefix_cache)
            embeds = torch.cat([response_embeds.to(dtype), layout.suffix_embeds], dim=1)
        positions = positions[:, offset:]
        hidden = self.network.base_model(
            inputs_embeds=embeds, attention_mask=self._mask(embeds, visible, positions, past),
            position_ids=positions, use_cache=past is not None, **{_CACHE: past},
        ).last_hidden_state
        return hidden, visible, offset

    @torch.no_grad()
    def score_texts(self, prompts: list[str], responses: list[str], ledger: ComputeLedger | None = None
                    ) -> torch.Tensor:
        """Float32 scores [N] on the CPU, `batch_size` conversations per forward pass, each pass counted
        in `ledger` when one is given (`entrgi.compute`).

        `text_path="template"` renders each response with the chat template; "splice" tokenises
        the template's prefix and suffix (as the embedding path does) and the response verbatim.
        """
        rows = self.text_rows(prompts, responses)
        scores = []
        for i in range(0, len(rows), self.config.batch_size):
            batch = self.tokenizer.pad(
                {"input_ids": rows[i : i + self.config.batch_size]}, padding=True, return_tensors="pt"
            ).to(self.device)
            if ledger is not None:
                ledger.rm_forward(*batch["input_ids"].shape)
            scores.append(self.network(**batch).logits[:, 0].float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def text_rows(self, prompts: list[str], responses: list[str]) -> list[list[int]]:
        """RM token ids of each conversation as the text path reads it (`reward.text_path`)."""
        if self.config.text_path == "splice":
            return [self.splice_ids(p, r) for p, r in zip(prompts, responses, strict=True)]
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def splice_ids(self, prompt: str, response: str) -> list[int]:
        """RM token ids of [template prefix | the response's own tokens | template suffix]."""
        prefix, suffix = self.template_parts(prompt)
        return prefix + self.tokenizer(response, add_special_tokens=False)["input_ids"] + suffix


def render(tokenizer, prompt: str, response: str) -> str:
    """The conversation in the RM's chat template, as the RM was trained to read it."""
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(conversation, tokenize=False)


def template_parts(tokenizer, prompt: str) -> list[list[int]]:
    """Token ids of the rendered template before and after the assistant's response (also checked before loading)."""
    rendered = render(tokenizer, prompt, _PLACEHOLDER)
    if rendered.count(_PLACEHOLDER) != 1:
        raise ValueError("the reward chat template does not render the response exactly once")
    return [tokenizer(part, add_special_tokens=False)["input_ids"] for part in rendered.split(_PLACEHOLDER)]


def _merge_adapter(network, adapter_path: str):
    try:
        from peft import PeftModel
    except ImportError:
        raise ImportError("reward.adapter_path needs the `peft` package: pip install 'entrgi[peft]'") from None
    folder = resolve_checkpoint(adapter_path, "reward.adapter_path", marker="adapter_config.json")
    return PeftModel.from_pretrained(network, str(folder)).merge_and_unload()
