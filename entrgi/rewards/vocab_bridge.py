"""The vocabulary bridge: RM embedding rows in the dLLM's vocabulary order (SPEC §4).

A dLLM token maps to the RM token with the exact same string (Dream and Qwen3 share most
of their byte-level BPE vocabulary); any other token, including ids past the end of the
dLLM tokenizer (embedding padding), maps to the RM's unk token, or its eos when it has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
