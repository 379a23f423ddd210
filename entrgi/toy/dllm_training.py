"""Training the toy dLLM as a masked diffusion LM, through the forward that later samples from it.

Each example is a chat-templated prompt followed by a response region of L tokens: the
response, then EOS up to L (Dream's SFT padding, which is how a dLLM learns where to
stop). A noise level t ~ U(0, 1] per example (clamped at 1e-3) masks each response token
with probability t; the loss is the cross-entropy at the masked positions weighted by 1/t
(the masked diffusion ELBO), divided by L. The prompt is never masked. Logits come from
`DiffusionLM.differentiable_logits`, so the logit shift (position i predicts token i+1),
the bidirectional mask and the positions are exactly those used at sampling time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from entrgi.models import DiffusionLM
from entrgi.toy.optimization import Optimization, Optimizer


@dataclass(frozen=True)
class DiffusionTraining(Optimization):
    """Optimisation settings of the dLLM."""

    # Response regions are this long or drawn from [min_region, max_region] (half the batches
    # each), so sampling works at other lengths than the tiny experiment's 16.
    region: int = 16
    min_region: int = 12
    max_region: int = 24


@dataclass
class EncodedPairs:
    """Token ids of (prompt, response) pairs: prompts in the dLLM's chat template, responses bare."""

    prompts: list[list[int]]
    responses: list[list[int]]

    @classmethod
    def encode(cls, model: DiffusionLM, pairs: list[tuple[str, str]]) -> EncodedPairs:
        templated = {p: model.encode_prompt(p) for p in dict.fromkeys(p for p, _ in pairs)}  # prompts repeat
        prompts = [templated[p] for p, _ in pairs]
        responses = model.tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
        return cls(prompts, responses)


def _batch(model: DiffusionLM, data: EncodedPairs, rows: list[int], region: int, generator: torch.Generator):
    """Canvas [B, P + L] (left-padded prompts, masked response region), key mask, targets [B, L], masked, t."""
    width = max(len(data.prompts[i]) for i in rows)
    canvas, keep, targets = [], [], []
    for i in rows:
        prompt, response = data.prompts[i], data.responses[i][:region]
        canvas.append([model.pad_token_id] * (width - len(prompt)) + prompt)
        keep.append([False] * (width - len(prompt)) + [True] * (len(prompt) + region))
        targets.append(response + [model.eos_token_id] * (region - len(response)))
    targets = torch.tensor(targets)
    t = torch.rand(len(rows), 1, generator=generator).clamp_min(1e-3)
    masked = torch.rand(targets.shape, generator=generator) < t
    response = torch.where(masked, torch.full_like(targets, model.mask_token_id), targets)
    return torch.cat([torch.tensor(canvas), response], dim=1), torch.tensor(keep), targets, masked, t


def train_dllm(model: DiffusionLM, data: EncodedPairs, settings: DiffusionTraining, seed: int) -> list[float]:
    """Train `model.network` in place; returns the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    network = model.network.train().requires_grad_(True)
    optimizer = Optimizer(network, settings)
    longest = max(map(len, data.responses)) + 1  # the region always holds the response and one EOS
    losses = []
    progress = tqdm(range(settings.steps), desc="dLLM", unit="step")
    for step in progress:
        rows = torch.randint(len(data.prompts), (settings.batch_size,), generator=generator).tolist()
        region = settings.region
        if step % 2:
            region = int(torch.randint(settings.min_region, settings.max_region + 1, (), generator=generator))
        canvas, keep, targets, masked, t = _batch(model, data, rows, max(region, longest), generator)
        logits = model.differentiable_logits(canvas, keep, canvas.shape[1] - targets.shape[1])
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = (nll * masked / t).sum() / targets.numel()
        optimizer.step(loss)
        losses.append(loss.item())
        if step % 50 == 0:
            progress.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    network.eval().requires_grad_(False)
    return losses

