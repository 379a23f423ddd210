"""The frozen reward model: a sequence classifier with one output (Skywork-Reward-V2 style).

Final scores always go through the standard discrete path: the decoded response rendered in
the RM's own chat template, tokenised, batched.
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
    tokenizer_class: str | None = None
    batch_size: int = ranged(8, low=1)
    device: str = "auto"
    dtype: str = one_of("auto", "auto", "bfloat16", "float16", "float32")


class RewardModel:
    """Scores (prompt, response) pairs with a frozen `AutoModelForSequenceClassification`."""

    def __init__(
        self,
        path: str,
        tokenizer_class: str | None = None,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
    ):
        folder = resolve_checkpoint(path, "reward.path")
        self.device = resolve_device(device)
        self.network = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, dtype=resolve_dtype(dtype, self.device)
        )
        self.network.to(self.device).eval().requires_grad_(False)
        tok_cls = getattr(transformers, tokenizer_class) if tokenizer_class else transformers.AutoTokenizer
        self.tokenizer = tok_cls.from_pretrained(folder)
        if self.network.config.pad_token_id is None:  # batched pooling needs it
            self.network.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size

    def render(self, prompt: str, response: str) -> str:
        """The conversation as the RM was trained to read it."""
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(conversation, tokenize=False)

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
