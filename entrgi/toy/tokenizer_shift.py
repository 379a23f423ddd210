"""The toy RM given another tokenizer: its trained weights, with some of the dLLM's words no longer in its vocabulary.

For measuring the vocabulary bridges (`reward.bridge`) where the RM's tokenizer differs from the
dLLM's in tokens responses actually use (the toy world's two tokenizers differ only in
system-prompt tokens: every generated token maps exactly). A share of the word tokens both
vocabularies hold (a space and three or more letters) is taken out of the RM's BPE: the merges
that build them go, and with them every merge that needs a removed token; tokens no merge can
build any more keep their ids and embedding rows under names no text produces. The RM then
spells those words in smaller pieces, whose rows it was trained with but never in that
sequence. `--steps N` then fine-tunes it on the shifted tokenizer (labelled corpus responses, as
the toy RM was trained): an RM trained with its own, different tokenizer. The held-out RM–oracle
rank correlation of the toy RM and of the shifted one (`agreement`) says how good a proxy each is;
every bridge compared on one shifted RM is compared against the same RM.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Tokenizer

from entrgi.formats import save_reward
from entrgi.models import DiffusionLM, DiffusionLMConfig
from entrgi.rewards import RewardModel, RewardModelConfig
from entrgi.toy.agreement import spearman
from entrgi.toy.grammar import benchmark_prompts, corpus
from entrgi.toy.optimization import Optimization
from entrgi.toy.reward_data import evaluation_set, labelled, sample_responses
from entrgi.toy.reward_training import train_reward
from entrgi.toy.world import toy_world_path

_WORD = re.compile(r"^Ġ[A-Za-z]{3,}$")


def shift_tokenizer(tokenizer_json: dict, shared: set[str], share: float, seed: int) -> tuple[dict, list[str]]:
    """A copy of a byte-level BPE `tokenizer.json` without a `share` of the word tokens in `shared`
    (drawn with `seed`), and the tokens that no longer exist (removed, and those built from them)."""
    model = tokenizer_json["model"]
    words = sorted(t for t in model["vocab"] if t in shared and _WORD.match(t))
    removed = set(random.Random(seed).sample(words, round(share * len(words))))
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    built = {a + b for a, b in merges}
    reachable = {t for t in model["vocab"] if t not in built}  # the byte alphabet
    kept = []
    for a, b in merges:  # in merge order: a merge survives when both parts still exist
        if a in reachable and b in reachable and a + b not in removed:
            kept.append([a, b])
            reachable.add(a + b)
    gone = sorted(t for t in model["vocab"] if t not in reachable)
    vocab = {(f"<|unused_{i}|>" if t in gone else t): i for t, i in model["vocab"].items()}
    shifted = json.loads(json.dumps(tokenizer_json))
    shifted["model"]["vocab"], shifted["model"]["merges"] = vocab, kept
    return shifted, gone


def shifted_toy_reward(folder: Path, share: float = 0.5, seed: int = 0) -> list[str]:
    """Write the toy RM with a shifted tokenizer into `folder`; returns the tokens it lost."""
    source = toy_world_path("reward")
    shutil.copytree(source, folder, dirs_exist_ok=True)
    dllm = Qwen2Tokenizer.from_pretrained(toy_world_path("dllm"))
    tokenizer_json = json.loads((source / "tokenizer.json").read_text())
    shifted, gone = shift_tokenizer(tokenizer_json, set(dllm.get_vocab()), share, seed)
    (folder / "tokenizer.json").write_text(json.dumps(shifted, ensure_ascii=False))
    AutoTokenizer.from_pretrained(folder)  # loads
    return gone


def fine_tune(folder: Path, steps: int, seed: int = 0, pairs: int = 8000) -> None:
    """Fine-tune the RM in `folder` on its own tokenizer: `steps` steps on labelled corpus responses."""
    held_out = {prompt for _, prompt in benchmark_prompts(32, 0)}
    examples = labelled(corpus(pairs, seed + 11, exclude=held_out), random.Random(seed))
    reward = RewardModel(RewardModelConfig(path=str(folder), device="cpu", dtype="float32"))
    train_reward(reward, examples, Optimization(steps=steps, warmup=min(50, steps // 4)), seed)
    save_reward(folder, reward.network.to(torch.bfloat16), reward.tokenizer)


def agreement(folders: list[Path], seed: int = 2) -> list[float]:
    """Held-out RM–oracle Spearman of each RM folder, on the toy dLLM's samples for the benchmark prompts
    (and corpus-like responses, swaps and breaks: `entrgi.toy.reward_data.evaluation_set`)."""
    model = DiffusionLM(DiffusionLMConfig(path=str(toy_world_path("dllm")), tokenizer_class="Qwen2Tokenizer",
                                          device="cpu"))
    prompts = [prompt for _, prompt in benchmark_prompts(32, 0)]
    held_out = evaluation_set(sample_responses(model, prompts, seed, temperature=0.7, num_samples=4), seed)
    truth = [q for _, _, q in held_out]
    return [spearman(RewardModel(RewardModelConfig(path=str(f), device="cpu")).score_texts(
        [p for p, _, _ in held_out], [r for _, r, _ in held_out]).tolist(), truth) for f in folders]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0, help="fine-tuning steps on the shifted tokenizer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lost = shifted_toy_reward(args.folder, args.share, args.seed)
    print(f"{args.folder}: {len(lost)} tokens no longer in the RM vocabulary: {' '.join(lost)}")
    if args.steps:
        fine_tune(args.folder, args.steps, args.seed)
    toy, shifted = agreement([toy_world_path("reward"), args.folder])
    print(f"held-out RM-oracle Spearman: toy RM {toy:.4f}, shifted RM {shifted:.4f}")
