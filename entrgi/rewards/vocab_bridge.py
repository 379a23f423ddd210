"""The vocabulary bridge: RM embedding rows in the dLLM's vocabulary order (SPEC §4).

A dLLM token maps to the RM token with the exact same string (Dream and Qwen3 share most
of their byte-level BPE vocabulary); any other token, including ids past the end of the
dLLM tokenizer (embedding padding), maps to the RM's unk token, or its eos when it has none.
`BridgedReward` is the RM as guidance reads a response written in dLLM token ids: the mapped
embedding rows and the tail it hides (from the first EOS, or stop token, on).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from entrgi.validation import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocabBridge:
    token_mapping: torch.Tensor  # [V_dllm] long: RM id of each dLLM id
    exact: torch.Tensor  # [V_dllm] bool: the dLLM token string exists in the RM vocabulary
    coverage: float  # fraction of the dLLM tokenizer's tokens mapped exactly

    def mapped_table(self, rm_embedding: torch.Tensor) -> torch.Tensor:
        """E_mapped [V_dllm, d] = rm_embedding[token_mapping]."""
        return rm_embedding[self.token_mapping.to(rm_embedding.device)]


def build_vocab_bridge(dllm_tokenizer, rm_tokenizer, dllm_vocab_size: int) -> VocabBridge:
    """Map every dLLM id in [0, dllm_vocab_size) to an RM id by token string."""
    rm_vocab = rm_tokenizer.get_vocab()
    fallback = rm_tokenizer.unk_token_id if rm_tokenizer.unk_token_id is not None else rm_tokenizer.eos_token_id
    if fallback is None:
        raise ValueError("the reward tokenizer has neither an unk nor an eos token to map unknown tokens to")
    named = min(len(dllm_tokenizer), dllm_vocab_size)
    tokens = dllm_tokenizer.convert_ids_to_tokens(list(range(named)))
    rm_ids = [rm_vocab.get(tok, -1) if tok is not None else -1 for tok in tokens]
    rm_ids += [-1] * (dllm_vocab_size - named)
    ids = torch.tensor(rm_ids, dtype=torch.long)
    exact = ids >= 0
    return VocabBridge(
        token_mapping=torch.where(exact, ids, torch.full_like(ids, fallback)),
        exact=exact,
        coverage=int(exact[:named].sum()) / named if named else 0.0,
    )


class BridgedReward:
    """The reward model reading responses in the dLLM's token ids, on the device.

    Built from the dLLM and the RM (both on one device, else ConfigError naming both). `table`
    [V_dllm, d] holds the RM embedding of each dLLM token; `coverage` the share mapped exactly.
    """

    def __init__(self, model, reward):
        if torch.device(model.device) != torch.device(reward.device):
            raise ConfigError(
                f"guidance needs the dLLM and the reward model on one device, got model.device={model.device} "
                f"and reward.device={reward.device}"
            )
        self.reward = reward
        bridge = build_vocab_bridge(model.tokenizer, reward.tokenizer, model.vocab_size)
        self.coverage = bridge.coverage
        log.info("vocabulary bridge: %.2f%% of dLLM tokens map exactly into the RM vocabulary", 100 * bridge.coverage)
        self.table = bridge.mapped_table(reward.embedding_table.detach())
        # Which dLLM tokens end the response the RM reads (`reward.hide_from`): EOS (the reference) or every stop token.
        self.hide_ids = torch.tensor(
            model.stop_token_ids if reward.config.hide_from == "stop" else [model.eos_token_id], device=model.device
        )

    def visible(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, L] bool: the positions of responses `tokens` [N, L] before their first hidden token."""
        return torch.isin(tokens, self.hide_ids).long().cumsum(-1) == 0

    @torch.no_grad()
    def score_tokens(self, layout, tokens: torch.Tensor) -> torch.Tensor:
        """Float32 RM scores [N] of whole responses `tokens` [N, L] (dLLM ids), without gradient.

        The embedding path on the tokens' one-hot embeddings: with `fidelity=consistent` (every dLLM
        token in the RM vocabulary) the text path's score of the decoded response (`reward.text_path=splice`).
        """
        return self.reward.score_embeds(layout, self.table[tokens], self.visible(tokens))
