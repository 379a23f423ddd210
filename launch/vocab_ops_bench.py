"""Micro-benchmark of the vocabulary-sized operations of a guided step (issue 17 item 2).

Times one nucleus draw (`sample_nucleus`, top-p 0.95 at τ = 0.7, as the commit step and each hard-token
draw run it) and one EntRGi `_relax` iteration (entropy, weight, hard draw, soft embedding) with its
backward through the vocabulary softmax, on logits shaped like a real instruct dLLM's: Zipf-like rows
whose entropies spread over 0.5–4 nats (median ≈ 2). Prints one JSON line: medians in ms and the
process's peak RSS. Run it once per code version, alternating, to compare versions on a shared machine:

    OMP_NUM_THREADS=1 python launch/vocab_ops_bench.py --vocab 152064 --rows 512
    OMP_NUM_THREADS=1 python launch/vocab_ops_bench.py --vocab 424 --rows 512 --repeats 50
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from types import SimpleNamespace

import torch

from entrgi.categorical import sample_nucleus
from entrgi.guidance.base import GuidanceContext
from entrgi.guidance.reward_gradient import RewardGradientGuidance
from entrgi.noise import TrajectoryNoise

TRAJECTORIES = 16


def instruct_like_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Logits [rows, vocab]: a Zipf law over a random ranking per row, its exponent drawn per row so that
    the entropy runs from about 0.5 to 4 nats, plus a little Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.argsort(torch.rand(rows, vocab, generator=gen), dim=-1).float() + 1.0
    exponent = 1.05 + 1.6 * torch.rand(rows, 1, generator=gen)
    return -exponent * ranks.log_() + 0.3 * torch.randn(rows, vocab, generator=gen)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--rows", type=int, default=TRAJECTORIES * 32, help="masked positions N·F")
    parser.add_argument("--hidden", type=int, default=64, help="width of the RM embedding table")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--op", choices=["nucleus", "relax", "both"], default="both")
    args = parser.parse_args()
    torch.manual_seed(0)
    phi = instruct_like_logits(args.rows, args.vocab)
    entropy = -(torch.softmax(phi, -1) * torch.log_softmax(phi, -1)).nan_to_num().sum(-1)
    tau, top_p, mask_id = 0.7, 0.95, args.vocab - 1
    scaled = phi / tau
    scaled[:, mask_id] = float("-inf")
    uniform = torch.rand(args.rows, generator=torch.Generator().manual_seed(1))
    out = {"vocab": args.vocab, "rows": args.rows, "entropy_quartiles": torch.quantile(
        entropy, torch.tensor([0.25, 0.5, 0.75])).tolist(), "setup_rss_mb": peak_rss_mb()}
    if args.op in ("nucleus", "both"):
        out["nucleus_ms"] = median_ms(lambda: sample_nucleus(scaled, uniform, top_p), args.repeats)
    if args.op in ("relax", "both"):
        length = args.rows // TRAJECTORIES
        guidance = SimpleNamespace(  # what `_relax` reads of the guidance
            config=SimpleNamespace(rule="entrgi", temperature=tau, top_p=top_p, top_k=None),
            table=torch.randn(args.vocab, args.hidden), mask_token_id=mask_id,
        )
        masked = torch.ones(TRAJECTORIES, length, dtype=torch.bool)
        context = GuidanceContext(0, torch.zeros(TRAJECTORIES, length, dtype=torch.long), masked,
                                  TrajectoryNoise.for_prompts(1, ["p"], TRAJECTORIES))
        grad = torch.randn(TRAJECTORIES, length, args.hidden)
        leaf = phi.view(TRAJECTORIES, length, args.vocab).clone().requires_grad_(True)

        def relax():
            mix = RewardGradientGuidance._relax(guidance, leaf, context.positions, context, 0)[0]
            (mix.embeds * grad).sum().backward()
            leaf.grad = None

        out["relax_fwd_bwd_ms"] = median_ms(relax, args.repeats)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
