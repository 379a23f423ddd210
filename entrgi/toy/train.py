"""python -m entrgi.toy.train: build the toy world that backs `experiment=tiny` (CPU, fixed seed).

1. the held-out prompts of the tiny benchmark (entrgi/data/tiny_prompts.jsonl), drawn first
   so that no training example uses them;
2. a corpus of (prompt, response) pairs of mixed quality and a byte-level BPE per model;
3. the dLLM (Dream format) trained as a masked diffusion LM: first on faithful responses in
   one form (every requested attribute kept), where it learns to copy attributes from the
   prompt within a few hundred steps, then on the mixed corpus. On the mixed corpus alone
   a network this small learns the grammar at once but had not started copying after 3000
   steps (samples right on 12 % of requested attributes, chance level);
4. the RM (Qwen3 sequence classifier) trained to regress the oracle on corpus responses,
   the dLLM's samples and corruptions of both;
5. both saved in bfloat16 into entrgi/toy/weights/{dream,skywork}, reloaded from there,
   and checked: the dLLM's sample quality, the RM–oracle rank correlation on held-out
   prompts; the numbers and the wall time go to entrgi/toy/weights/training.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM, Qwen3ForSequenceClassification

from entrgi.formats import dream_config, dream_tokenizer, reward_config, reward_tokenizer, save_dream, save_reward
from entrgi.models import DiffusionLM, DiffusionLMConfig
from entrgi.rewards import RewardModel, RewardModelConfig
from entrgi.toy.agreement import spearman
from entrgi.toy.dllm_training import DiffusionTraining, EncodedPairs, train_dllm
from entrgi.toy.grammar import FAITHFUL_MIX, benchmark_prompts, corpus
from entrgi.toy.optimization import Optimization
from entrgi.toy.oracle import oracle
from entrgi.toy.reward_data import evaluation_set, labelled, sample_responses
from entrgi.toy.reward_training import train_reward
from entrgi.toy.world import PARTS, prompts_path, weights_dir

DLLM_SIZE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4}
REWARD_SIZE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4}
# Large enough that every word of the toy language is one token (the BPE stops merging below it).
VOCAB_SIZE = 1000
N_PROMPTS = 32
PROMPT_SEED = 0
CORPUS_SIZE = 40000
SAVE_DTYPE = torch.bfloat16  # as Dream and Skywork ship


def _transcripts(pairs: list[tuple[str, str]], system: bool) -> list[str]:
    """Chat transcripts with the templates' role names, so each tokenizer learns merges for them."""
    head = "system\nYou are a helpful assistant.\n" if system else ""
    return [f"{head}user\n{p}\nassistant\n{r}\n" for p, r in pairs]


def write_prompts(path: Path) -> list[str]:
    """The tiny benchmark: N_PROMPTS distinct held-out prompts, ids tiny-0…, category = template."""
    rows = [{"id": f"tiny-{i}", "prompt": prompt, "category": template}
            for i, (template, prompt) in enumerate(benchmark_prompts(N_PROMPTS, PROMPT_SEED))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [row["prompt"] for row in rows]


def build_dllm(folder: Path, phases: list[tuple[list[tuple[str, str]], DiffusionTraining]], seed: int) -> dict:
    """Train a fresh Dream-format dLLM on each (pairs, settings) phase in turn and save it in `folder`."""
    tokenizer = dream_tokenizer(_transcripts(phases[-1][0], system=True), VOCAB_SIZE)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as staging:  # the random start, loaded as any Dream checkpoint
        save_dream(Path(staging), Qwen2ForCausalLM(dream_config(tokenizer, DLLM_SIZE)), tokenizer)
        model = DiffusionLM(DiffusionLMConfig(path=staging, tokenizer_class="Qwen2Tokenizer", device="cpu",
                                              dtype="float32", decode="to_stop"))  # cut where the toy world scores
    report = []
    for pairs, settings in phases:
        losses = train_dllm(model, EncodedPairs.encode(model, pairs), settings, seed)
        report.append({"pairs": len(pairs), "final_loss": sum(losses[-100:]) / len(losses[-100:]),
                       "settings": asdict(settings)})
    save_dream(folder, model.network.to(SAVE_DTYPE), tokenizer)
    return {"phases": report}


def build_reward(folder: Path, examples: list[tuple[str, str, float]], pairs: list[tuple[str, str]],
                 settings: Optimization, seed: int) -> dict:
    tokenizer = reward_tokenizer(_transcripts(pairs, system=False), VOCAB_SIZE)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as staging:
        save_reward(Path(staging), Qwen3ForSequenceClassification(reward_config(tokenizer, REWARD_SIZE)), tokenizer)
        reward = RewardModel(RewardModelConfig(path=staging, device="cpu", dtype="float32"))
    losses = train_reward(reward, examples, settings, seed)
    save_reward(folder, reward.network.to(SAVE_DTYPE), tokenizer)
    return {"final_mse": sum(losses[-100:]) / len(losses[-100:]), "examples": len(examples),
            "settings": asdict(settings)}


def reward_examples(model: DiffusionLM, pairs: list[tuple[str, str]], n_prompts: int, seed: int):
    """The RM's labelled set: corpus pairs and the dLLM's samples on training prompts, with corruptions."""
    rng = random.Random(seed)
    prompts = list(dict.fromkeys(p for p, _ in pairs))[:n_prompts]
    cut = int(0.75 * len(prompts))  # most at the tiny experiment's temperature, some hotter and worse
    sampled = [pair for chosen, temperature in ((prompts[:cut], 0.7), (prompts[cut:], 1.0))
               for pair in sample_responses(model, chosen, seed, temperature, num_samples=4)]
    return labelled(pairs, rng) + labelled(sampled, rng)


def evaluate(folder: Path, prompts: list[str], seed: int) -> dict:
    """The shipped checkpoints on the held-out prompts: sample quality and RM–oracle agreement."""
    model = DiffusionLM(DiffusionLMConfig(path=str(folder / PARTS["dllm"]), tokenizer_class="Qwen2Tokenizer",
            device="cpu"))
    reward = RewardModel(RewardModelConfig(path=str(folder / PARTS["reward"]), device="cpu"))
    samples = sample_responses(model, prompts, seed, temperature=0.7, num_samples=4)
    held_out = evaluation_set(samples, seed)
    scores = reward.score_texts([p for p, _, _ in held_out], [r for _, r, _ in held_out]).tolist()
    truth = [q for _, _, q in held_out]
    well_formed = [i for i, q in enumerate(truth) if q > 0]
    qualities = [oracle(p, r) for p, r in samples]
    return {
        "heldout_spearman": spearman(scores, truth),
        "heldout_spearman_well_formed": spearman([scores[i] for i in well_formed], [truth[i] for i in well_formed]),
        "heldout_examples": len(held_out),
        "sample_oracle_mean": sum(qualities) / len(qualities),
        "sample_well_formed": sum(q > 0 for q in qualities) / len(qualities),
        "sample_perfect": sum(q == 1.0 for q in qualities) / len(qualities),
        "samples": [{"prompt": p, "response": r, "oracle": q}
                    for (p, r), q in zip(samples[:16], qualities[:16], strict=True)],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m entrgi.toy.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=weights_dir(), help="where the checkpoints go")
    parser.add_argument("--prompts", type=Path, default=prompts_path(), help="where the benchmark prompts go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus-pairs", type=int, default=CORPUS_SIZE, help="mixed corpus size (dLLM and RM)")
    parser.add_argument("--warmup-steps", type=int, default=600, help="dLLM steps on faithful responses")
    parser.add_argument("--dllm-steps", type=int, default=2400, help="dLLM steps on the mixed corpus")
    parser.add_argument("--reward-steps", type=int, default=Optimization.steps)
    parser.add_argument("--reward-prompts", type=int, default=2000, help="training prompts the dLLM samples for the RM")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    held_out = write_prompts(args.prompts)
    pairs = corpus(args.corpus_pairs, args.seed, exclude=set(held_out))
    staging = Path(tempfile.mkdtemp(prefix="toy-world.", dir=args.out.parent))
    staging.chmod(0o755)
    try:
        report: dict = {"command": " ".join(["python -m entrgi.toy.train", *(argv or sys.argv[1:])]),
                        "seed": args.seed, "corpus_pairs": len(pairs), "benchmark_prompts": len(held_out)}
        faithful = corpus(args.corpus_pairs // 2, args.seed + 3, exclude=set(held_out), mix=FAITHFUL_MIX)
        phases = [(faithful, DiffusionTraining(steps=args.warmup_steps)),
                  (pairs, DiffusionTraining(steps=args.dllm_steps))]
        report["dllm"] = build_dllm(staging / PARTS["dllm"], phases, args.seed)
        shipped = DiffusionLM(DiffusionLMConfig(path=str(staging / PARTS["dllm"]),
                tokenizer_class="Qwen2Tokenizer", device="cpu"))
        examples = reward_examples(shipped, corpus(args.corpus_pairs // 2, args.seed + 1, exclude=set(held_out)),
                                   args.reward_prompts, args.seed)
        report["reward"] = build_reward(staging / PARTS["reward"], examples, pairs,
                                        Optimization(steps=args.reward_steps), args.seed)
        report.update(evaluate(staging, held_out, seed=args.seed + 2))
        report["wall_seconds"] = time.perf_counter() - started
        (staging / "training.json").write_text(json.dumps(report, indent=2) + "\n")
        if args.out.exists():
            shutil.rmtree(args.out)
        staging.rename(args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    for row in report["samples"]:
        print(f"{row['oracle']:.3f}  {row['prompt']!r} -> {row['response']!r}")
    return report


def cli() -> None:
    """`entrgi-train-toy` and `python -m entrgi.toy.train` (the report is printed, not returned)."""
    main()


if __name__ == "__main__":
    cli()
