"""The vocabulary bridge: RM embedding rows in the dLLM's vocabulary order (SPEC §4).

A dLLM token maps to the RM token with the exact same string (Dream and Qwen3 share most
of their byte-level BPE vocabulary). What the RM reads for any other token is the
`reward.bridge` option: `exact` (the reference) sends it to the RM's unk token, or its eos
when it has none; `retokenize` decodes the dLLM token to text, tokenises that text with the
RM tokenizer and reads the mean of those pieces' embedding rows — an approximation: the RM
was never trained on averaged embeddings, and a token that is part of a UTF-8 character
decodes to a replacement character. Special tokens and ids past the end of the dLLM
tokenizer (embedding padding) always take the fallback. `BridgedReward` is the RM as guidance
reads a response written in dLLM token ids: the mapped embedding rows and the tail it hides
(from the first EOS, or stop token, on).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from entrgi.rewards.ar_likelihood import ResponseTargets
from entrgi.rewards.reward_model import Bridge
from entrgi.validation import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocabBridge:
    """Every dLLM id as a weighted sum of RM ids: rows `pieces[0]`, RM ids `pieces[1]`, weights `pieces[2]`.

    An exactly mapped token (or one on the fallback) is one piece of weight 1; a retokenised
    one is its n pieces of weight 1/n each.
    """

    token_mapping: torch.Tensor  # [V_dllm] long: the RM id of each dLLM id (a retokenised one: its first piece)
    exact: torch.Tensor  # [V_dllm] bool: the dLLM token string exists in the RM vocabulary
    coverage: float  # fraction of the dLLM tokenizer's tokens mapped exactly
    pieces: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ([P] dLLM rows, [P] RM ids, [P] float weights)
    retokenized: int = 0  # tokens represented by their retokenisation

    def mapped_table(self, rm_embedding: torch.Tensor) -> torch.Tensor:
        """E_mapped [V_dllm, d]: row i = Σ_pieces weight · rm_embedding[RM id] (= rm_embedding[token_mapping]
        with the exact bridge)."""
        rows, ids, weights = (t.to(rm_embedding.device) for t in self.pieces)
        table = torch.zeros(self.token_mapping.shape[0], rm_embedding.shape[1], dtype=torch.float32,
                            device=rm_embedding.device)
        table.index_add_(0, rows, rm_embedding[ids].float() * weights[:, None])
        return table.to(rm_embedding.dtype)


def build_vocab_bridge(dllm_tokenizer, rm_tokenizer, dllm_vocab_size: int, bridge: str = "exact") -> VocabBridge:
    """Map every dLLM id in [0, dllm_vocab_size) to RM ids: by token string, the rest by `bridge` (`Bridge`)."""
    rm_vocab = rm_tokenizer.get_vocab()
    fallback = rm_tokenizer.unk_token_id if rm_tokenizer.unk_token_id is not None else rm_tokenizer.eos_token_id
    if fallback is None:
        raise ValueError("the reward tokenizer has neither an unk nor an eos token to map unknown tokens to")
    named = min(len(dllm_tokenizer), dllm_vocab_size)
    tokens = dllm_tokenizer.convert_ids_to_tokens(list(range(named)))
    special = set(dllm_tokenizer.all_special_ids) | {
        i for i, added in getattr(dllm_tokenizer, "added_tokens_decoder", {}).items() if added.special
    }
    rows, ids, weights, mapping, retokenized = [], [], [], [], 0
    for i in range(dllm_vocab_size):
        token = tokens[i] if i < named else None
        pieces = [rm_vocab[token]] if token is not None and token in rm_vocab else []
        if not pieces and bridge == Bridge.retokenize and token is not None and i not in special:
            text = dllm_tokenizer.convert_tokens_to_string([token])
            pieces = rm_tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            retokenized += bool(pieces)
        pieces = pieces or [fallback]
        rows += [i] * len(pieces)
        ids += pieces
        weights += [1.0 / len(pieces)] * len(pieces)
        mapping.append(pieces[0])
    exact = torch.tensor([tokens[i] in rm_vocab if i < named and tokens[i] is not None else False
                          for i in range(dllm_vocab_size)], dtype=torch.bool)
    return VocabBridge(
        token_mapping=torch.tensor(mapping, dtype=torch.long),
        exact=exact,
        coverage=int(exact[:named].sum()) / named if named else 0.0,
        pieces=(torch.tensor(rows, dtype=torch.long), torch.tensor(ids, dtype=torch.long),
                torch.tensor(weights, dtype=torch.float32)),
        retokenized=retokenized,
    )


def visible_tokens(tokens: torch.Tensor, hide_ids: torch.Tensor) -> torch.Tensor:
    """[N, L] bool: the positions of responses `tokens` [N, L] before their first token in `hide_ids`."""
    return torch.isin(tokens, hide_ids).long().cumsum(-1) == 0


def hidden_token_ids(model, hide_from: str) -> list[int]:
    """The dLLM ids that end the response an RM reads (`reward.hide_from`): EOS (the reference) or every stop token."""
    return list(model.stop_token_ids) if hide_from == "stop" else [model.eos_token_id]


class GeneratedCoverage:
    """The share of *generated* tokens that map exactly into the RM vocabulary, counted per job (one benchmark).

    Counts the response tokens an RM reads (before the first hidden token, `reward.hide_from`); the
    counts are an additive artifact (`generated_coverage.json`), so a resumed job keeps its earlier
    batches'. Built from the dLLM and a reward model (`reward.tokenizer`, `reward.config.hide_from`).
    """

    ARTIFACT = "generated_coverage"

    def __init__(self, model, reward):
        self.exact = build_vocab_bridge(model.tokenizer, reward.tokenizer, model.vocab_size).exact
        self.hide_ids = torch.tensor(hidden_token_ids(model, reward.config.hide_from))
        self.counts = [0.0, 0.0]  # [exactly mapped, generated]

    def add(self, responses: torch.Tensor) -> None:
        """Count responses [N, L] (dLLM ids, any device; read after the denoising loop)."""
        responses = responses.cpu()
        seen = visible_tokens(responses, self.hide_ids)
        self.counts = [self.counts[0] + float((self.exact[responses] & seen).sum()), self.counts[1] + float(seen.sum())]

    def artifacts(self) -> dict:
        return {self.ARTIFACT: {"labels": ["exact", "generated"], "counts": list(self.counts)}}

    @staticmethod
    def summary(artifact: dict) -> dict:
        """summary.json's `generated_coverage` (None when nothing was generated) from the summed artifact."""
        exact, generated = artifact["counts"]
        share = exact / generated if generated else None
        if share is not None:
            log.info("vocabulary bridge: %.2f%% of the %d generated tokens the RM read map exactly into its "
                     "vocabulary", 100 * share, generated)
        return {"generated_coverage": share}


class BridgedReward:
    """The reward model reading responses in the dLLM's token ids, on the device.

    Built from the dLLM and the RM (both on one device, else ConfigError naming both). `table`
    [V_dllm, d] holds the RM embedding of each dLLM token (`reward.bridge`); `coverage` the share
    of the vocabulary mapped exactly; `token_mapping` [V_dllm] the RM id a reward that reads
    tokens (`ARLikelihood`) scores for each dLLM token.
    """

    def __init__(self, model, reward):
        if torch.device(model.device) != torch.device(reward.device):
            raise ConfigError(
                f"guidance needs the dLLM and the reward model on one device, got model.device={model.device} "
                f"and reward.device={reward.device}"
            )
        self.reward = reward
        bridge = build_vocab_bridge(model.tokenizer, reward.tokenizer, model.vocab_size, reward.config.bridge)
        self.coverage = bridge.coverage
        log.info("vocabulary bridge: %.2f%% of dLLM tokens map exactly into the RM vocabulary; reward.bridge=%s "
                 "(%d retokenised)", 100 * bridge.coverage, reward.config.bridge, bridge.retokenized)
        self.table = bridge.mapped_table(reward.embedding_table.detach())
        self.token_mapping = bridge.token_mapping.to(model.device)
        self.hide_ids = torch.tensor(hidden_token_ids(model, reward.config.hide_from), device=model.device)

    def visible(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, L] bool: the positions of responses `tokens` [N, L] before their first hidden token."""
        return visible_tokens(tokens, self.hide_ids)

    @torch.no_grad()
    def score_tokens(self, layout, tokens: torch.Tensor) -> torch.Tensor:
        """Float32 RM scores [N] of whole responses `tokens` [N, L] (dLLM ids), without gradient.

        The embedding path on the tokens' one-hot embeddings: with `fidelity=consistent` (every dLLM
        token in the RM vocabulary) the text path's score of the decoded response (`reward.text_path=splice`).
        """
        # A reward that reads the tokens (ar-likelihood) scores their RM ids; a classifier reads embeddings only.
        targets = {"targets": ResponseTargets(self.token_mapping[tokens])} if self.reward.reads_tokens else {}
        return self.reward.score_embeds(layout, self.table[tokens], self.visible(tokens), **targets)
