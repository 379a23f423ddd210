"""Compute accounting: model passes, tokens, an estimate of FLOPs and wall seconds of every job.

The work is counted where it is done, from tensor shapes (a shape is host metadata: reading it
never waits on the device, so nothing here adds a host sync to the denoising loop): the sampler
counts its dLLM forwards (`entrgi.sampler.Denoised.compute`), each guidance method its own RM
work (`Guidance.compute`: reward-gradient methods M forward + backward passes per guided step,
fk one forward per scored step, the SMC methods both), and the runner the final RM scoring of
the K responses (`RewardModel.score_texts(..., ledger=)`).

**Units.**

* A *pass* is one sequence through a network: a batched call on N rows counts N passes. The
  RM's prefix cache (template and prompt, computed once per batch by `RewardModel.layout`, for
  each method that builds a layout) counts one pass per prompt, over the prefix only.
* *Tokens* are rows × the width of what the network computes, padding included (the canvas's
  left padding, the RM's padded prefix and suffix, the right padding of a text batch). With the
  RM's prefix cache a guidance pass computes only [response | suffix], and counts only that.
  With the dLLM's block cache (`model.cache`) a step inside a block computes the block and what
  follows it ("prefix") or the block alone ("dual"), and counts only those columns.
* *FLOPs* ≈ 2·N per token forward and 4·N per token backward (twice the forward), N the model's
  non-embedding parameters (`non_embedding_parameters`), as in Kaplan et al. 2020, *Scaling Laws
  for Neural Language Models*, arXiv 2001.08361, §2.1. An estimate: attention's
  context-dependent term, the embedding lookups, the dLLM's LM head (which runs on the response
  positions only) and guidance's softmax(φ/τ)·E mixing are not counted; the RM's weights are
  frozen, so its backward computes input gradients only (closer to 2·N than to the 4·N counted);
  `reward.gradient_checkpointing` recomputes the forward inside the backward, not counted.

**Per prompt** (`samples.jsonl`): a batch's counts, FLOPs and wall seconds divided equally over
its prompts. Every call runs on all of a batch's rows and each prompt owns K of them (and one
prefix row), so a prompt's passes are exact; tokens share the batch's padding equally. The
totals in `summary.json` are the sums over the prompts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

COMPUTE = "compute"  # the key of the accounting in samples.jsonl records and summary.json


@dataclass
class ComputeLedger:
    """Passes and tokens through the dLLM and the RM, host ints (module docstring for the units)."""

    dllm_forward_passes: int = 0
    dllm_forward_tokens: int = 0
    rm_forward_passes: int = 0
    rm_forward_tokens: int = 0
    rm_backward_passes: int = 0
    rm_backward_tokens: int = 0

    def dllm_forward(self, rows: int, width: int) -> None:
        """One dLLM forward over `rows` sequences of `width` tokens."""
        self.dllm_forward_passes += rows
        self.dllm_forward_tokens += rows * width

    def rm_forward(self, rows: int, width: int) -> None:
        """One RM forward over `rows` sequences of `width` tokens (as computed: without a cached prefix)."""
        self.rm_forward_passes += rows
        self.rm_forward_tokens += rows * width

    def rm_backward(self, rows: int, width: int) -> None:
        """One RM backward through a forward over `rows` sequences of `width` tokens."""
        self.rm_backward_passes += rows
        self.rm_backward_tokens += rows * width

    def __add__(self, other: ComputeLedger) -> ComputeLedger:
        return ComputeLedger(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                                for f in dataclasses.fields(self)})


def non_embedding_parameters(network: torch.nn.Module) -> int:
    """Parameters of `network` (each shared tensor once) less its input and output token-embedding tables.

    The Kaplan et al. 2020 convention: a lookup is no matmul, and the two tables of a tied model are
    one tensor. A sequence classifier's score head counts (it has no output embedding).
    """
    embeddings = {id(network.get_input_embeddings().weight)}
    output = network.get_output_embeddings()
    if output is not None:
        embeddings.add(id(output.weight))
    return sum(p.numel() for p in network.parameters() if id(p) not in embeddings)


def reward_parameters(reward: Any) -> int:
    """Non-embedding parameters of the networks a reward runs: a reward model's, the reward-model terms
    of a weighted sum (`reward=sum`); 0 for a text scorer (its work is not counted)."""
    network = getattr(reward, "network", None)
    if network is not None:
        return non_embedding_parameters(network)
    return sum(reward_parameters(term) for term in getattr(reward, "terms", {}).values())


@dataclass(frozen=True)
class ModelSizes:
    """Non-embedding parameters of the job's dLLM and RM, counted once from the loaded models."""

    dllm_parameters: int
    rm_parameters: int

    def flops(self, ledger: ComputeLedger) -> int:
        """Estimated FLOPs of the work in `ledger`: 2·N per token forward, 4·N per token backward."""
        return (2 * self.dllm_parameters * ledger.dllm_forward_tokens
                + 2 * self.rm_parameters * ledger.rm_forward_tokens
                + 4 * self.rm_parameters * ledger.rm_backward_tokens)


def prompt_share(ledger: ComputeLedger, sizes: ModelSizes, wall_seconds: float, prompts: int) -> dict[str, float]:
    """One prompt's share of a batch of `prompts` prompts that did the work in `ledger` in `wall_seconds`:
    every count, the FLOPs and the seconds divided by `prompts` (module docstring)."""
    counts = {**dataclasses.asdict(ledger), "flops": sizes.flops(ledger), "wall_seconds": wall_seconds}
    return {key: value / prompts for key, value in counts.items()}


def job_totals(records: list[dict[str, Any]], sizes: ModelSizes) -> dict[str, Any] | None:
    """The sums of the records' shares and the models' parameter counts, for summary.json; None when a
    record has no share (written before the accounting existed: the totals would be short)."""
    shares = [record.get(COMPUTE) for record in records]
    if not shares or None in shares:
        return None
    totals: dict[str, Any] = {key: sum(share[key] for share in shares) for key in shares[0]}
    for key in totals.keys() - {"wall_seconds"}:  # counts: whole again once the shares are summed
        totals[key] = round(totals[key])
    return {**totals, **dataclasses.asdict(sizes)}


def merged_totals(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The summary totals of shards of one job (`entrgi.reporting.runs`): counts, FLOPs and seconds summed,
    the parameter counts (the same models) kept; None when a shard has none."""
    if not parts or None in parts:
        return None
    sizes = {field.name for field in dataclasses.fields(ModelSizes)}
    return {key: parts[0][key] if key in sizes else sum(part[key] for part in parts) for key in parts[0]}
