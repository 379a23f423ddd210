"""Offline stand-ins for the judges, written in the real on-disk formats and built on first use.

* `judge` — a tiny Qwen2 causal LM with a Qwen-style tokenizer (digits are single tokens) and
  chat template, loaded by the same `from_pretrained` code as LMUnit-qwen2.5-72b. Its weights
  are programmed, not trained, so that its behaviour is known: one channel per "source" token
  makes the last token decide the next (`\\n` → `{"` → `score` → `":` → ` ` → digit → `}` → EOS),
  so greedy decoding writes LMUnit's JSON answer; one attention head averages a "sentiment"
  channel over the whole conversation (+1 for `happy`, `bright`, `warm`, `gentle`, −1 for `old`,
  `strange`, `quiet`, `small`), and that mean tilts the distribution over the digits 0–6 (the
  `lmunit` package's scale), so the score rises with positive words in the query and response
  and falls with negative ones.
* `reward` — a second tiny Qwen3 reward model (the random world's recipe, other random
  weights): a held-out RM for runs on the small worlds.

Built into `$ENTRGI_CACHE` (as the random world is), once per machine, safely under concurrent jobs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3ForSequenceClassification

from entrgi.formats import DREAM_CHAT_TEMPLATE, reward_config, reward_tokenizer, save_reward, train_bpe
from entrgi.random_world import SIZES, build_once, corpus, default_root

VERSION = "tiny-judges-v2"
JUDGE_SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4}
# The judge's answer, token by token: each token is followed by the next one; ` ` by a digit.
ANSWER = ("\n", '{"', "score", '":', " ")
CLOSE = "}"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
POSITIVE, NEGATIVE = ("happy", "bright", "warm", "gentle"), ("old", "strange", "quiet", "small")
CHAIN_LOGIT = 6.0  # per unit of a normalised channel; the sentiment tilt stays far below it
TILT = 6.0  # logit of digit d: TILT · (d − 3) · the normalised mean sentiment


def _judge_corpus() -> list[str]:
    """The random world's chat text plus LMUnit's prompt and answer format, so both tokenize compactly."""
    text = corpus(n_pairs=1500)
    lines = [f"Query: {line}\n\nResponse: {line}\n\nUnit Test: Is the response clear?\n" for line in text[:300]]
    answers = [f'{{"score": {d}}}\n' for d in range(10)] * 100
    return text + lines + answers


def _single_token(raw, text: str) -> int:
    ids = raw.encode(text, add_special_tokens=False).ids
    if len(ids) != 1:
        raise RuntimeError(f"the tiny judge's tokenizer splits {text!r} into {len(ids)} tokens")
    return ids[0]


def _program(model: Qwen2ForCausalLM, raw) -> None:
    """Set every weight so that greedy decoding writes `{"score": d}` then EOS (see the module docstring)."""
    answer = [_single_token(raw, t) for t in ANSWER]
    digits = [_single_token(raw, str(d)) for d in range(0, 7)]
    close, eos = _single_token(raw, CLOSE), raw.token_to_id("<|im_end|>")
    transitions = [*zip(answer, answer[1:], strict=False), *((answer[-1], d) for d in digits),
                   *((d, close) for d in digits), (close, eos), (eos, eos)]
    sources = list(dict.fromkeys(source for source, _ in transitions))
    constant, sentiment, mean = 0, 1, 2  # channels; then one per source token
    slot = {source: 3 + i for i, source in enumerate(sources)}
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    layer = model.model.layers[0]
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("norm.weight"):  # norms stay 1
                parameter.zero_()
        embed[:, constant] = 1.0
        for words, value in ((POSITIVE, 1.0), (NEGATIVE, -1.0)):
            for word in words:
                for form in (word, " " + word):
                    ids = raw.encode(form, add_special_tokens=False).ids
                    if len(ids) == 1:
                        embed[ids[0], sentiment] = value
        for source, target in transitions:
            embed[source, slot[source]] = 1.0
            head[target, slot[source]] = CHAIN_LOGIT
        # Queries are zero, so attention is uniform over the conversation: head 0 returns the mean
        # sentiment (undoing the input norm's sqrt(hidden/2) scale of a sentiment token).
        layer.self_attn.v_proj.weight[0, sentiment] = (2.0 / embed.shape[1]) ** 0.5
        layer.self_attn.o_proj.weight[mean, 0] = 1.0
        head[digits, mean] = TILT * (torch.arange(0, 7, dtype=head.dtype) - 3.0)


def _write_judge(folder: Path) -> None:
    raw = train_bpe(_judge_corpus(), vocab_size=600, special_tokens=SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = DREAM_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(4)
    config = Qwen2Config(
        vocab_size=raw.get_vocab_size(), **JUDGE_SIZE, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=False, initializer_range=0.05, eos_token_id=raw.token_to_id("<|im_end|>"),
        pad_token_id=raw.token_to_id("<|endoftext|>"),
    )
    model = Qwen2ForCausalLM(config)
    _program(model, raw)
    model.save_pretrained(folder)


def _write_reward(folder: Path) -> None:
    """The random world's RM recipe (tokenizer, size) with other random weights."""
    tokenizer = reward_tokenizer(corpus(), vocab_size=360)
    torch.manual_seed(11)
    save_reward(folder, Qwen3ForSequenceClassification(reward_config(tokenizer, SIZES["tiny"])), tokenizer)


def ensure_tiny_judges(root: Path | None = None) -> dict[str, Path]:
    """Folders of the tiny judge and the held-out tiny RM, building them once."""
    target = Path(root or default_root()) / VERSION

    def build(staging: Path) -> None:
        for name, write in (("judge", _write_judge), ("reward", _write_reward)):
            (staging / name).mkdir()
            write(staging / name)

    build_once(target, target.parent / f"{VERSION}.lock", build)
    return {"judge": target / "judge", "reward": target / "reward"}
