"""Training the toy RM: regress the oracle score from the conversation the RM reads.

The RM sees exactly what `RewardModel.score_texts` gives it at evaluation (its own chat
template, its own tokenizer) and is fitted by squared error to the oracle score. It is a
proxy: finite data, a small network, and no guarantee about inputs it never saw.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from entrgi.rewards import RewardModel
from entrgi.toy.optimization import Optimization, Optimizer


def train_reward(reward: RewardModel, examples: list[tuple[str, str, float]], settings: Optimization,
                 seed: int) -> list[float]:
    """Train `reward.network` in place on (prompt, response, target) triples; returns the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    tokenizer = reward.tokenizer
    encoded = tokenizer([reward.render(p, r) for p, r, _ in examples], add_special_tokens=False)["input_ids"]
    targets = torch.tensor([target for _, _, target in examples])
    network = reward.network.train().requires_grad_(True)
    optimizer = Optimizer(network, settings)
    losses = []
    progress = tqdm(range(settings.steps), desc="RM", unit="step")
    for step in progress:
        rows = torch.randint(len(encoded), (settings.batch_size,), generator=generator)
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows.tolist()]}, return_tensors="pt")
        scores = network(**batch).logits[:, 0]
        loss = torch.nn.functional.mse_loss(scores, targets[rows])
        optimizer.step(loss)
        losses.append(loss.item())
        if step % 50 == 0:
            progress.set_postfix(mse=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    network.eval().requires_grad_(False)
    return losses
