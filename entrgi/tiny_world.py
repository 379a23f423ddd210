"""The offline tiny world: Dream- and LLaDA-format dLLMs and a Qwen3 reward model, CI-sized.

Both are written in the real on-disk formats (config.json with the real keys, tokenizer
files with the real special tokens, safetensors) and loaded by the same `from_pretrained`
code a 7B checkpoint goes through. Each has its own byte-level BPE tokenizer trained on
text made here, so the two vocabularies differ as Dream's and Qwen3's do and the
vocabulary bridge is exercised for real. Built once per machine, then cached.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForSequenceClassification,
)

VERSION = "tiny-world-v3"

# Network sizes: `tiny` for tests and the quick start, `mid` for performance measurements
# where model compute is not negligible next to Python overhead.
SIZES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "mid": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8},
}

DREAM_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message.role != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen3's template: the last assistant turn after the last user message carries a think
# block (empty when there is no reasoning); a `</think>` inside the content is split off.
QWEN3_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set content = m.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1] %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_user %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# LLaDA's Llama-3 style template.
LLADA_CHAT_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if loop.first %}{{- bos_token }}{%- endif %}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# LLaDA checkpoints name Llama's modules the OLMo way; used to write the tiny one.
_LLADA_NAMES = {
    "model.embed_tokens.": "model.transformer.wte.",
    "model.norm.": "model.transformer.ln_f.",
    "lm_head.": "model.transformer.ff_out.",
    "self_attn.q_proj.": "q_proj.",
    "self_attn.k_proj.": "k_proj.",
    "self_attn.v_proj.": "v_proj.",
    "self_attn.o_proj.": "attn_out.",
    "mlp.gate_proj.": "ff_proj.",
    "mlp.up_proj.": "up_proj.",
    "mlp.down_proj.": "ff_out.",
    "input_layernorm.": "attn_norm.",
    "post_attention_layernorm.": "ff_norm.",
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


# Qwen2/Qwen3's pre-tokenisation pattern: newlines split from words, digits one by one.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _train_tokenizer(text: list[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(text, trainer=trainer)
    tokenizer.add_special_tokens(special_tokens)  # appended after the BPE vocabulary, as in Qwen
    return tokenizer


def _write_dllm(folder: Path, text: list[str], size: dict[str, int]) -> None:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
    raw = _train_tokenizer(text, vocab_size=420, special_tokens=specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|mask|>"
    )
    tok.chat_template = DREAM_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    ids = {name: raw.token_to_id(name) for name in specials}
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=raw.get_vocab_size(), **size, num_key_value_heads=size["num_attention_heads"] // 2,
        max_position_embeddings=512,
        tie_word_embeddings=False, initializer_range=0.25, bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    # Rewrite config.json as Dream ships it: its own model_type, remote-code auto_map, mask id.
    dream = json.loads((folder / "config.json").read_text())
    dream.update(
        model_type="Dream", architectures=["DreamModel"], mask_token_id=ids["<|mask|>"],
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    )
    (folder / "config.json").write_text(json.dumps(dream, indent=2, sort_keys=True))
    # Dream ships a slow remote-code tokenizer: vocab.json + merges.txt, special tokens listed
    # in tokenizer_config.json, no tokenizer.json.
    fast = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps(fast["model"]["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in fast["model"]["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.pop("backend", None)
    tok_config.update(
        tokenizer_class="DreamTokenizer",
        auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        added_tokens_decoder={
            str(t["id"]): {"content": t["content"], "special": True, "lstrip": False, "rstrip": False,
                           "normalized": False, "single_word": False}
            for t in fast["added_tokens"]
        },
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, sort_keys=True))


def _write_llada(folder: Path, text: list[str], size: dict[str, int]) -> None:
    specials = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "<|mdm_mask|>"]
    raw = _train_tokenizer(text, vocab_size=400, special_tokens=specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
    )
    tok.chat_template = LLADA_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    ids = {name: raw.token_to_id(name) for name in specials}
    torch.manual_seed(2)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=raw.get_vocab_size(), **size, num_key_value_heads=size["num_attention_heads"],
        rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, initializer_range=0.25,
    ))
    llama.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    renamed = {}
    for name, tensor in weights.items():
        for llama_part, llada_part in _LLADA_NAMES.items():
            name = name.replace(llama_part, llada_part)
        renamed[name.replace("model.layers.", "model.transformer.blocks.")] = tensor
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    config = {  # LLaDA's own config.json keys (OLMo style)
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "d_model": size["hidden_size"], "n_heads": size["num_attention_heads"],
        "n_kv_heads": size["num_attention_heads"], "n_layers": size["num_hidden_layers"],
        "mlp_hidden_size": size["intermediate_size"], "mlp_ratio": size["intermediate_size"] // size["hidden_size"],
        "vocab_size": raw.get_vocab_size(), "embedding_size": raw.get_vocab_size(), "max_sequence_length": 512,
        "rope": True, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "layer_norm_type": "rms",
        "activation_type": "silu", "block_type": "llama", "include_bias": False, "weight_tying": False,
        "mask_token_id": ids["<|mdm_mask|>"], "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|startoftext|>"],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _write_reward(folder: Path, text: list[str], size: dict[str, int]) -> None:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    raw = _train_tokenizer(text, vocab_size=360, special_tokens=specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(1)
    config = Qwen3Config(
        vocab_size=raw.get_vocab_size(), **size, num_key_value_heads=size["num_attention_heads"] // 2,
        head_dim=size["hidden_size"] // size["num_attention_heads"], max_position_embeddings=1024,
        tie_word_embeddings=False, num_labels=1, pad_token_id=raw.token_to_id("<|endoftext|>"),
        eos_token_id=raw.token_to_id("<|im_end|>"),
    )
    Qwen3ForSequenceClassification(config).save_pretrained(folder)


def default_root() -> Path:
    return Path(os.environ.get("ENTRGI_CACHE", Path.home() / ".cache" / "entrgi"))


def ensure_tiny_world(size: str = "tiny", root: Path | None = None) -> dict[str, Path]:
    """Folders of the dLLMs and RM of one size, building them once (safe under concurrent jobs)."""
    if size not in SIZES:
        raise ValueError(f"tiny world size {size!r} is not one of {', '.join(SIZES)}")
    root = Path(root or default_root())
    target = root / VERSION / size
    paths = {"dllm": target / "dream", "llada": target / "llada", "reward": target / "skywork"}
    if (target / "complete").is_file():
        return paths
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{size}.lock")):
        if (target / "complete").is_file():
            return paths
        staging = Path(tempfile.mkdtemp(prefix=f"{size}.", dir=target.parent))
        staging.chmod(0o755)
        text = corpus()
        _write_dllm(staging / "dream", text, SIZES[size])
        _write_llada(staging / "llada", text, SIZES[size])
        _write_reward(staging / "skywork", text, SIZES[size])
        (staging / "complete").write_text(f"{VERSION} {size}\n")
        if target.exists():  # a half-built leftover from an interrupted build
            shutil.rmtree(target)
        staging.rename(target)
    return paths
