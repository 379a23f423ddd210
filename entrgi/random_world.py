"""The random offline worlds: Dream-, DiffuCoder-, LLaDA- and dllm-A2D-format dLLMs and a Qwen3 reward model,
untrained.

They prove the plumbing, not the method (their reward means nothing; the trained toy world,
`entrgi.toy`, is the one where guidance has a target): the real on-disk formats
(`entrgi.formats`) with random weights at two sizes, `tiny` for format tests and `mid` for
performance measurements. Built once per machine, then cached.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
)

from entrgi.formats import (
    DIFFUCODER_SPECIALS,
    a2d_config,
    a2d_tokenizer,
    dream_config,
    dream_tokenizer,
    llada_tokenizer,
    reward_config,
    reward_tokenizer,
    save_a2d,
    save_dream,
    save_llada,
    save_reward,
)

VERSION = "random-world-v4"

# Network sizes: `tiny` for format and plumbing tests, `mid` for performance measurements
# where model compute is not negligible next to Python overhead.
SIZES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "mid": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8},
}

_SUBJECTS = ["cat", "dog", "river", "mountain", "robot", "teacher", "garden", "city", "star", "ship"]
_ADJECTIVES = ["small", "bright", "quiet", "happy", "old", "green", "fast", "gentle", "strange", "warm"]
_VERBS = ["sees", "builds", "likes", "finds", "helps", "follows", "paints", "remembers"]
_ASKS = [
    "Describe the {a} {s}.",
    "Write one sentence about a {s}.",
    "Why is the {s} {a}?",
    "What does the {s} do?",
    "Tell me a short story about a {a} {s}.",
]


def corpus(n_pairs: int = 3000, seed: int = 0) -> list[str]:
    """Short chat transcripts built from a small grammar, deterministic by seed.

    They include the role names and blank lines of the chat templates, so both tokenizers
    learn merges for the template text as real ones do.
    """
    rng = random.Random(seed)
    lines = []
    for _ in range(n_pairs):
        s, s2 = rng.choice(_SUBJECTS), rng.choice(_SUBJECTS)
        a, v = rng.choice(_ADJECTIVES), rng.choice(_VERBS)
        ask = rng.choice(_ASKS).format(a=a, s=s)
        answer = rng.choice([
            f"The {a} {s} {v} the {s2}. It is {rng.choice(_ADJECTIVES)} and {a}.",
            f"{rng.randint(0, 99)} plus {rng.randint(0, 99)} is a number, and the {s} knows it!",
        ])
        lines.append(f"system\nYou are a helpful assistant.\nuser\n{ask}\nassistant\n\n\n\n{answer}\n")
    return lines


def _write_dllm(folder: Path, text: list[str], size: dict[str, int]) -> None:
    tokenizer = dream_tokenizer(text, vocab_size=420)
    torch.manual_seed(0)
    # A wide initialisation makes the random dLLM's distributions peaked, as a trained one's are.
    save_dream(folder, Qwen2ForCausalLM(dream_config(tokenizer, size, initializer_range=0.25)), tokenizer)


def _write_diffucoder(folder: Path, text: list[str], size: dict[str, int]) -> None:
    tokenizer = dream_tokenizer(text, vocab_size=410, specials=DIFFUCODER_SPECIALS)
    torch.manual_seed(3)
    save_dream(folder, Qwen2ForCausalLM(dream_config(tokenizer, size, initializer_range=0.25)), tokenizer)


def _write_a2d(folder: Path, text: list[str], size: dict[str, int]) -> None:
    tokenizer = a2d_tokenizer(text, vocab_size=380)
    torch.manual_seed(4)
    save_a2d(folder, Qwen3ForCausalLM(a2d_config(tokenizer, size, initializer_range=0.25)), tokenizer)


def _write_llada(folder: Path, text: list[str], size: dict[str, int]) -> None:
    tokenizer = llada_tokenizer(text, vocab_size=400)
    torch.manual_seed(2)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), **size, num_key_value_heads=size["num_attention_heads"],
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.25,
    ))
    save_llada(folder, llama, tokenizer)


def _write_reward(folder: Path, text: list[str], size: dict[str, int]) -> None:
    tokenizer = reward_tokenizer(text, vocab_size=360)
    torch.manual_seed(1)
    save_reward(folder, Qwen3ForSequenceClassification(reward_config(tokenizer, size)), tokenizer)


def default_root() -> Path:
    return Path(os.environ.get("ENTRGI_CACHE", Path.home() / ".cache" / "entrgi"))


def build_once(target: Path, lock: Path, build: Callable[[Path], None]) -> None:
    """Run `build(staging)` and move the result to `target` once per machine, safe under concurrent jobs.

    The folder is built beside `target` and renamed into place with a `complete` marker, so a
    reader never sees a half-built world; a leftover of an interrupted build is replaced.
    """
    if (target / "complete").is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        if (target / "complete").is_file():
            return
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
        staging.chmod(0o755)
        build(staging)
        (staging / "complete").write_text(f"{VERSION} {target.name}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)


def ensure_random_world(size: str = "tiny", root: Path | None = None) -> dict[str, Path]:
    """Folders of the dLLMs and RM of one size, building them once (safe under concurrent jobs)."""
    if size not in SIZES:
        raise ValueError(f"random world size {size!r} is not one of {', '.join(SIZES)}")
    target = Path(root or default_root()) / VERSION / size

    def build(staging: Path) -> None:
        text = corpus()
        _write_dllm(staging / "dream", text, SIZES[size])
        _write_llada(staging / "llada", text, SIZES[size])
        _write_diffucoder(staging / "diffucoder", text, SIZES[size])
        _write_a2d(staging / "a2d", text, SIZES[size])
        _write_reward(staging / "skywork", text, SIZES[size])

    build_once(target, target.parent / f"{size}.lock", build)
    return {"dllm": target / "dream", "llada": target / "llada", "diffucoder": target / "diffucoder",
            "a2d": target / "a2d", "reward": target / "skywork"}
