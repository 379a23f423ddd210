"""The frozen reward model: a sequence classifier with one output (Skywork-Reward-V2 style).

Two ways in. Final scores go through the standard discrete path: the decoded response
rendered in the RM's own chat template, tokenised, batched. Guidance goes through the
embedding path: [template prefix | response embeddings | template suffix], differentiable
in the response embeddings, pooled at the true last real position (transformers cannot see
padding in `inputs_embeds` and would pool position -1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from omegaconf import MISSING

from entrgi.checkpoints import resolve_checkpoint, resolve_device, resolve_dtype
from entrgi.validation import one_of, ranged


@dataclass
class RewardModelConfig:
    """The `reward` config group."""

    _target_: str = "entrgi.rewards.RewardModel"
    path: str = MISSING
    adapter_path: str | None = None
    tokenizer_class: str | None = None
    batch_size: int = ranged(8, low=1)
    gradient_checkpointing: bool = False
    device: str = "auto"
    dtype: str = one_of("auto", "auto", "bfloat16", "float16", "float32")


# Stands in for the response while the chat template is rendered, then split on.
_PLACEHOLDER = "\u2063ENTRGI_RESPONSE\u2063"


@dataclass
class RewardInputLayout:
    """Where each trajectory's response sits in the RM input; built once per batch.

    Rows are left-padded: [pad | prefix_n | response (L) | suffix_n], so prompts whose
    template parts differ in length share one tensor and no row is pooled at padding.
    """

    constant_embeds: torch.Tensor  # [N, W, d] prefix and suffix embeddings, zeros elsewhere
    response_columns: torch.Tensor  # [N, L] column of response position l in row n
    real: torch.Tensor  # [N, W] bool: prefix and suffix tokens (response columns are False)


class RewardModel:
    """Scores (prompt, response) pairs with a frozen `AutoModelForSequenceClassification`."""

    def __init__(
        self,
        path: str,
        adapter_path: str | None = None,
        tokenizer_class: str | None = None,
        batch_size: int = 8,
        gradient_checkpointing: bool = False,
        device: str = "auto",
        dtype: str = "auto",
    ):
        """
        Args:
            path: Hub id or local folder of the sequence classifier.
            adapter_path: a PEFT (LoRA) adapter trained on top of it, merged in at load.
            batch_size: conversations per forward pass on the text path.
            gradient_checkpointing: recompute RM activations in the backward pass of guidance,
                trading time for memory (the RM backward dominates guidance memory).
        """
        folder = resolve_checkpoint(path, "reward.path")
        self.device = resolve_device(device)
        self.network = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, dtype=resolve_dtype(dtype, self.device)
        )
        if adapter_path:
            self.network = _merge_adapter(self.network, adapter_path)
        self.network.to(self.device).eval().requires_grad_(False)
        if gradient_checkpointing:
            # transformers only checkpoints in training mode; the RM has no dropout to switch on.
            enable = getattr(self.network, "activation_checkpointing_enable", None)  # newer transformers name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.network.train()
        tok_cls = getattr(transformers, tokenizer_class) if tokenizer_class else transformers.AutoTokenizer
        self.tokenizer = tok_cls.from_pretrained(folder)
        if self.network.config.pad_token_id is None:  # batched pooling needs it
            self.network.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size

    def render(self, prompt: str, response: str) -> str:
        """The conversation as the RM was trained to read it."""
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(conversation, tokenize=False)

    @property
    def embedding_table(self) -> torch.Tensor:
        return self.network.get_input_embeddings().weight

    def template_parts(self, prompt: str) -> list[list[int]]:
        """Token ids of the rendered template before and after the assistant's response."""
        rendered = self.render(prompt, _PLACEHOLDER)
        if rendered.count(_PLACEHOLDER) != 1:
            raise ValueError("the reward chat template does not render the response exactly once")
        return [self.tokenizer(part, add_special_tokens=False)["input_ids"] for part in rendered.split(_PLACEHOLDER)]

    @torch.no_grad()
    def layout(self, prompts: list[str], num_samples: int, response_length: int) -> RewardInputLayout:
        """The constant part of the RM input for prompts repeated K times (prompt-major rows)."""
        parts = [self.template_parts(p) for p in prompts for _ in range(num_samples)]
        width = max(len(pre) + len(suf) for pre, suf in parts) + response_length
        ids, real, columns = [], [], []
        for prefix, suffix in parts:
            pad = width - len(prefix) - response_length - len(suffix)
            start = pad + len(prefix)
            ids.append([0] * pad + prefix + [0] * response_length + suffix)
            real.append([False] * pad + [True] * len(prefix) + [False] * response_length + [True] * len(suffix))
            columns.append(list(range(start, start + response_length)))
        ids_t = torch.tensor(ids, device=self.device)
        real_t = torch.tensor(real, device=self.device)
        embeds = self.network.get_input_embeddings()(ids_t) * real_t.unsqueeze(-1)
        return RewardInputLayout(embeds, torch.tensor(columns, device=self.device), real_t)

    def score_embeds(
        self, layout: RewardInputLayout, response_embeds: torch.Tensor, response_visible: torch.Tensor
    ) -> torch.Tensor:
        """Differentiable float32 scores [N] of responses given as embeddings [N, L, d].

        `response_visible` [N, L] hides response positions from the RM (after the first EOS).
        Positions count visible tokens only, as if hidden ones were not there.
        """
        d = layout.constant_embeds.shape[-1]
        columns = layout.response_columns
        embeds = layout.constant_embeds.scatter(
            1, columns.unsqueeze(-1).expand(-1, -1, d), response_embeds.to(layout.constant_embeds.dtype)
        )
        visible = layout.real.scatter(1, columns, response_visible)
        positions = (visible.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.network.base_model(
            inputs_embeds=embeds, attention_mask=visible.long(), position_ids=positions
        ).last_hidden_state
        last = (visible.long() * torch.arange(visible.shape[1], device=visible.device)).argmax(-1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.network.score(pooled)[:, 0].float()

    @torch.no_grad()
    def score_texts(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Float32 scores [N] on the CPU, `batch_size` conversations per forward pass."""
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.batch_size], padding=True, add_special_tokens=False, return_tensors="pt"
            ).to(self.device)
            scores.append(self.network(**batch).logits[:, 0].float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)


def _merge_adapter(network, adapter_path: str):
    try:
        from peft import PeftModel
    except ImportError:
        raise ImportError("reward.adapter_path needs the `peft` package: pip install 'entrgi[peft]'") from None
    folder = resolve_checkpoint(adapter_path, "reward.adapter_path", marker="adapter_config.json")
    return PeftModel.from_pretrained(network, str(folder)).merge_and_unload()
