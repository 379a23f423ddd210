"""The real on-disk checkpoint formats, written by the project for its offline worlds.

Dream-v0 (Qwen2 weights, a remote-code config.json with model type `Dream` and the mask
id, a slow tokenizer as vocab.json + merges.txt), LLaDA (Llama weights under OLMo-style
names and config keys) and a Skywork-Reward-V2-style Qwen3 sequence classifier (fast
tokenizer, Qwen3 chat template). Whatever network is saved here, random (`entrgi.random_world`)
or trained (`entrgi.toy`), is read back by the same `from_pretrained` code a 7B checkpoint
goes through. Each model gets its own byte-level BPE tokenizer, so two vocabularies differ
as Dream's and Qwen3's do and the vocabulary bridge is exercised for real.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config

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
# block (empty when there is no reasoning); a `</think>` inside the content is split off;
# `enable_thinking=False` closes an empty think block after the generation prompt.
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
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
# LLaDA's Llama-3 style template.
LLADA_CHAT_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if loop.first %}{{- bos_token }}{%- endif %}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
DREAM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
# DiffuCoder pads a response with its own token after Dream's mask (the authors split outputs at it).
DIFFUCODER_SPECIALS = [*DREAM_SPECIALS, "<|dlm_pad|>"]
REWARD_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# dllm's AR-to-diffusion Qwen3 models: Qwen3's tokens, and `<|mask|>` added after them (dllm.utils.get_tokenizer).
A2D_SPECIALS = [*REWARD_SPECIALS, "<|mask|>"]
LLADA_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|mdm_mask|>"]
# LLaDA checkpoints name Llama's modules the OLMo way.
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
# Qwen2/Qwen3's pre-tokenisation pattern: newlines split from words, digits one by one.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_bpe(text: list[str], vocab_size: int, special_tokens: list[str], fill: bool = False) -> Tokenizer:
    """A byte-level BPE tokenizer with Qwen's pre-tokenisation, specials after the learnt vocabulary.

    A small corpus runs out of merges long before a real vocabulary's size: `fill` then pads the
    learnt vocabulary to exactly `vocab_size` tokens with byte strings of two, then three, symbols
    (in a fixed order, so two tokenizers filled alike share them, as Dream's and Qwen3's share most
    of theirs). They have no merges, so text never encodes to them, but they decode like any token.
    """
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
    if fill:
        _fill_vocabulary(tokenizer, vocab_size)
    tokenizer.add_special_tokens(special_tokens)  # appended after the BPE vocabulary, as in Qwen
    return tokenizer


def _fill_vocabulary(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Add byte-level strings of 2, then 3 symbols not in `tokenizer`'s BPE vocabulary until it holds `vocab_size`."""
    state = json.loads(tokenizer.to_str())["model"]
    vocab, alphabet = dict(state["vocab"]), sorted(pre_tokenizers.ByteLevel.alphabet())
    strings = ("".join(s) for n in (2, 3) for s in itertools.product(alphabet, repeat=n))
    for string in strings:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(string, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer.model = models.BPE(vocab=vocab, merges=merges)


def dream_tokenizer(
    text: list[str], vocab_size: int, specials: list[str] = DREAM_SPECIALS, fill: bool = False
) -> PreTrainedTokenizerFast:
    """Dream's special tokens (pad = eos = <|endoftext|>, <|mask|>; `specials` may add more, as DiffuCoder's
    <|dlm_pad|>) and chat template on a BPE trained on `text` (`fill`: padded to `vocab_size`, `train_bpe`)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(text, vocab_size, specials, fill), eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", mask_token="<|mask|>",
    )
    tokenizer.chat_template = DREAM_CHAT_TEMPLATE
    return tokenizer


def dream_config(tokenizer: PreTrainedTokenizerFast, size: dict[str, int], **settings) -> Qwen2Config:
    """A Qwen2 config (Dream's layout) of the given size for `tokenizer`'s vocabulary (`vocab_size` in `settings`:
    more embedding rows than tokens, as Dream's 152,064 for 151,667 tokens)."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    settings = {"vocab_size": len(tokenizer), "max_position_embeddings": 512, "tie_word_embeddings": False, **settings}
    return Qwen2Config(
        **size, num_key_value_heads=size["num_attention_heads"] // 2, bos_token_id=eos,
        eos_token_id=eos, pad_token_id=eos, **settings,
    )


def save_dream(folder: Path, network: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """Write a Qwen2 network and its tokenizer the way Dream-v0 ships: remote-code config.json with
    model type `Dream`, auto_map and the mask id; a slow tokenizer (vocab.json + merges.txt, specials
    listed in tokenizer_config.json, no tokenizer.json)."""
    tokenizer.save_pretrained(folder)
    network.save_pretrained(folder)
    dream = json.loads((folder / "config.json").read_text())
    dream.update(
        model_type="Dream", architectures=["DreamModel"], mask_token_id=tokenizer.convert_tokens_to_ids("<|mask|>"),
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    )
    (folder / "config.json").write_text(json.dumps(dream, indent=2, sort_keys=True))
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


def llada_tokenizer(text: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """LLaDA's special tokens (<|mdm_mask|>, <|eot_id|>, …) and chat template on a BPE trained on `text`."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(text, vocab_size, LLADA_SPECIALS), bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|mdm_mask|>",
    )
    tokenizer.chat_template = LLADA_CHAT_TEMPLATE
    return tokenizer


def save_llada(folder: Path, network: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    """Write a Llama network the way LLaDA ships: OLMo-style weight names and config.json keys."""
    tokenizer.save_pretrained(folder)
    network.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    renamed = {}
    for name, tensor in weights.items():
        for llama_part, llada_part in _LLADA_NAMES.items():
            name = name.replace(llama_part, llada_part)
        renamed[name.replace("model.layers.", "model.transformer.blocks.")] = tensor
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    c = network.config
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in LLADA_SPECIALS}
    config = {  # LLaDA's own config.json keys (OLMo style)
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "auto_map": {  # as the real checkpoint's: AutoTokenizer would ask to run configuration_llada.py
            "AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
        "d_model": c.hidden_size, "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads, "n_layers": c.num_hidden_layers,
        "mlp_hidden_size": c.intermediate_size, "mlp_ratio": c.intermediate_size // c.hidden_size,
        "vocab_size": c.vocab_size, "embedding_size": c.vocab_size, "max_sequence_length": 512,
        "rope": True, "rope_theta": c.rope_parameters["rope_theta"], "rms_norm_eps": c.rms_norm_eps,
        "layer_norm_type": "rms", "activation_type": "silu", "block_type": "llama", "include_bias": False,
        "weight_tying": False, "mask_token_id": ids["<|mdm_mask|>"], "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|startoftext|>"],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def reward_tokenizer(text: list[str], vocab_size: int, fill: bool = False) -> PreTrainedTokenizerFast:
    """Qwen3's special tokens (eos = <|im_end|>, pad = <|endoftext|>) and chat template on a BPE trained on `text`
    (`fill`: padded to `vocab_size`, `train_bpe`)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(text, vocab_size, REWARD_SPECIALS, fill), eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def reward_config(tokenizer: PreTrainedTokenizerFast, size: dict[str, int], **settings) -> Qwen3Config:
    """A one-label Qwen3 sequence-classifier config (Skywork-Reward-V2's layout) for `tokenizer` (`vocab_size` in
    `settings`: more embedding rows than tokens, as Qwen3's 151,936)."""
    settings = {"vocab_size": len(tokenizer), **settings}
    return Qwen3Config(
        **size, num_key_value_heads=size["num_attention_heads"] // 2,
        head_dim=size["hidden_size"] // size["num_attention_heads"], max_position_embeddings=1024,
        tie_word_embeddings=False, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, **settings,
    )


def a2d_tokenizer(text: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Qwen3's special tokens (eos = <|im_end|>, pad = <|endoftext|>) and chat template, and dllm's
    <|mask|> after them, on a BPE trained on `text`."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(text, vocab_size, A2D_SPECIALS), eos_token="<|im_end|>",
        pad_token="<|endoftext|>", mask_token="<|mask|>",
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def causal_lm_config(tokenizer: PreTrainedTokenizerFast, size: dict[str, int], **settings) -> Qwen3Config:
    """A Qwen3 causal-LM config in Qwen3-0.6B's layout (tied embeddings, grouped KV heads) for `tokenizer`: the
    AR-to-diffusion dLLM's (`save_a2d`) and `reward=ar-likelihood`'s."""
    return Qwen3Config(
        vocab_size=len(tokenizer), **size, num_key_value_heads=size["num_attention_heads"] // 2,
        head_dim=size["hidden_size"] // size["num_attention_heads"], max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **settings,
    )


def save_a2d(folder: Path, network: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """Write a Qwen3 causal LM the way dllm's AR-to-diffusion models ship (`dllm/pipelines/a2d/convert.py`
    then SFT, e.g. Qwen3-0.6B-diffusion-mdlm-v0.1): transformers' Qwen3 weight names (the LM head tied to
    the embedding, so not stored), config.json with model type `a2d-qwen3` and architecture
    `A2DQwen3LMHeadModel` that only the dllm package registers, a fast tokenizer with <|mask|>."""
    tokenizer.save_pretrained(folder)
    network.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="a2d-qwen3", architectures=["A2DQwen3LMHeadModel"])
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def save_reward(folder: Path, network: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """Write a Qwen3 sequence classifier and its fast tokenizer as Skywork-Reward-V2 ships them (a Qwen3
    causal LM and its tokenizer as Qwen3-0.6B ships them: the same files)."""
    tokenizer.save_pretrained(folder)
    network.save_pretrained(folder)
