"""The random offline worlds: Dream-, DiffuCoder-, LLaDA- and dllm-A2D-format dLLMs and a Qwen3 reward model,
untrained.

They prove the plumbing, not the method (their reward means nothing; the trained toy world,
`entrgi.toy`, is the one where guidance has a target): the real on-disk formats
(`entrgi.formats`) with random weights at three sizes, `tiny` for format tests, `mid` for
performance measurements, and `vocab` (Dream's and Qwen3's vocabulary sizes, a dLLM whose
distributions are as peaked as a trained one's; no LLaDA) for the vocabulary-sized work.
Built once per machine, then cached.
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
    PreTrainedModel,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
)

from entrgi.formats import (
    DIFFUCODER_SPECIALS,
    a2d_tokenizer,
    causal_lm_config,
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

VERSION = "random-world-v5"

# Network sizes: `tiny` for format and plumbing tests, `mid` for performance measurements
# where model compute is not negligible next to Python overhead.
SIZES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "mid": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8},
    "vocab": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4},
}
# The `vocab` world's vocabularies: BPE tokens before the specials, and embedding rows (past the
# tokenizer, never drawn), as Dream-v0 (151,643 + 24 specials, 152,064 rows) and Qwen3 (151,936 rows).
VOCAB_TOKENS, DREAM_ROWS, QWEN3_ROWS = 151_643, 152_064, 151_936
# Its dLLM's next-token distributions: a Zipf prior over the tokens (log-probability -ZIPF·log rank)
# plus a random term of standard deviation NOISE (in logits); see `peak_distributions`.
ZIPF, NOISE = 1.6, 2.0

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
    save_a2d(folder, Qwen3ForCausalLM(causal_lm_config(tokenizer, size, initializer_range=0.25)), tokenizer)


def _write_vocab_dllm(folder: Path, text: list[str], size: dict[str, int]) -> None:
    tokenizer = dream_tokenizer(text, VOCAB_TOKENS, fill=True)
    torch.manual_seed(3)
    network = Qwen2ForCausalLM(dream_config(tokenizer, size, vocab_size=DREAM_ROWS, initializer_range=0.25))
    peak_distributions(network, len(tokenizer), ZIPF, NOISE)
    save_dream(folder, network, tokenizer)


@torch.no_grad()
def peak_distributions(network: PreTrainedModel, tokens: int, zipf: float, noise: float, seed: int = 0) -> None:
    """Give a random Qwen2- or Llama-layout network the next-token distributions of a trained LM, in place.

    Random weights at a vocabulary of V = 152k give near-uniform distributions (entropy ≈ log V
    ≈ 11.9 nats); a trained instruct model's sit mostly between 0.5 and 4 nats (EntRGi, Fig. 2),
    with a long tail. Here hidden feature 0 is a constant: every token embedding holds the same
    value there and no layer writes to it, so after the final RMSNorm it is c/rms(x) — large
    where the rest of the residual stream is small. The LM head reads it as a Zipf prior over the
    tokens in a fixed random order of ranks (logit −`zipf`·log rank at a typical position) and the
    other features as a random term of standard deviation `noise`: positions differ in how peaked
    they are and in which tokens lead. Rows `tokens`.. (embedding padding) get a logit far below
    every token's, so they are never drawn, as in Dream. Calibrated on one forward pass of random ids.
    """
    generator = torch.Generator().manual_seed(seed)
    hidden = network.config.hidden_size
    embedding = network.get_input_embeddings().weight
    embedding[:, 0] = embedding[:, 1:].norm(dim=-1).mean()  # as large as the rest of a token embedding
    for layer in network.model.layers:  # nothing else writes feature 0 of the residual stream
        layer.self_attn.o_proj.weight[0] = 0
        layer.mlp.down_proj.weight[0] = 0
    ids = torch.randint(0, tokens, (8, 64), generator=generator, device="cpu")
    normed = network.model(input_ids=ids.to(embedding.device)).last_hidden_state.float()
    prior_scale = normed[..., 0].median()
    rest_scale = normed[..., 1:].norm(dim=-1).median()
    rank = torch.randperm(tokens, generator=generator, device="cpu").double() + 1
    head = network.get_output_embeddings().weight
    head[:, 0] = -60.0 / prior_scale  # padding rows: e^-60 below the top token
    head[:tokens, 0] = (-zipf * rank.log()).to(head.device) / prior_scale
    noise_rows = torch.randn(head.shape[0], hidden - 1, generator=generator, device="cpu")
    head[:, 1:] = noise_rows.to(head.device) * (noise / rest_scale)
    head[tokens:, 1:] = 0


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


def _write_vocab_reward(folder: Path, text: list[str], size: dict[str, int]) -> None:
    tokenizer = reward_tokenizer(text, VOCAB_TOKENS, fill=True)
    torch.manual_seed(1)
    network = Qwen3ForSequenceClassification(reward_config(tokenizer, size, vocab_size=QWEN3_ROWS))
    save_reward(folder, network, tokenizer)


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
    """Folders of the dLLMs and RM of one size, building them once (safe under concurrent jobs).

    The `vocab` world has only the Dream-format dLLM and the RM (the other keys are absent)."""
    if size not in SIZES:
        raise ValueError(f"random world size {size!r} is not one of {', '.join(SIZES)}")
    target = Path(root or default_root()) / VERSION / size
    writers = {"dream": _write_dllm, "llada": _write_llada, "diffucoder": _write_diffucoder, "a2d": _write_a2d,
               "skywork": _write_reward}
    if size == "vocab":
        writers = {"dream": _write_vocab_dllm, "skywork": _write_vocab_reward}

    def build(staging: Path) -> None:
        text = corpus()
        for name, write in writers.items():
            write(staging / name, text, SIZES[size])

    build_once(target, target.parent / f"{size}.lock", build)
    parts = {"dllm": "dream", "llada": "llada", "diffucoder": "diffucoder", "a2d": "a2d", "reward": "skywork"}
    return {part: target / name for part, name in parts.items() if name in writers}
