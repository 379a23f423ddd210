"""Greedy decoding with the top log-probabilities of every generated token, for LLM judges.

Two backends produce the same `GreedyOutput`, so the judge's parsing is one code path:

* `VllmGreedy` — vLLM with tensor parallelism, for the 70B-class judges on several GPUs;
* `TransformersGreedy` — `AutoModelForCausalLM.generate`, batched with left padding, for a
  single device and for the tiny judge of the tests.

Both read the model's raw next-token distribution (no repetition penalty or other processor
from the checkpoint's generation_config), tokenise the chat-template text without adding
special tokens again (the template already holds BOS where the model wants one), and stop
at the tokenizer's EOS or after `max_new_tokens`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import transformers

from entrgi.evaluators.base import release_memory
from entrgi.validation import ConfigError
from entrgi.weights import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]


@dataclass
class GreedyOutput:
    """One completion: the text of each generated token, and per token its top-k (text, log-prob)."""

    tokens: list[str]
    top_logprobs: list[list[tuple[str, float]]]

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def chat_token_ids(tokenizer, conversation: Conversation) -> list[int]:
    """The conversation rendered by the model's chat template, ready for the assistant's turn."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class GreedyBackend(StrEnum):
    """What serves a judge's greedy requests (`LMUnitConfig.backend`); `auto` picks one (`open_backend`)."""

    auto = "auto"
    vllm = "vllm"
    transformers = "transformers"


def open_backend(backend: GreedyBackend | str, folder: Path, **settings: Any):
    """`auto` is vLLM when it is installed and a GPU is visible, else transformers."""
    if backend == GreedyBackend.auto:
        backend = GreedyBackend.vllm if vllm_available() and torch.cuda.is_available() else GreedyBackend.transformers
    if backend == GreedyBackend.vllm:
        if not vllm_available():
            raise ConfigError("backend='vllm' needs the vllm package: pip install 'entrgi[judge]' (GPU machines)")
        return VllmGreedy(folder, **settings)
    return TransformersGreedy(folder, **settings)


class TransformersGreedy:
    """Batched greedy decoding on one device with transformers."""

    def __init__(self, folder: Path, *, max_new_tokens: int, top_logprobs: int, batch_size: int,
                 device: str, dtype: str, trust_remote_code: bool, **unused: Any):
        self.device = resolve_device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.network = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        ).to(self.device).eval()
        self.generation = transformers.GenerationConfig(
            do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id, output_logits=True, return_dict_in_generate=True,
        )
        self.top_logprobs, self.batch_size = top_logprobs, batch_size

    @torch.no_grad()
    def generate(self, conversations: Sequence[Conversation]) -> list[GreedyOutput]:
        outputs: list[GreedyOutput] = []
        for first in range(0, len(conversations), self.batch_size):
            ids = [chat_token_ids(self.tokenizer, c) for c in conversations[first : first + self.batch_size]]
            batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
            result = self.network.generate(**batch, generation_config=self.generation)
            new = result.sequences[:, batch["input_ids"].shape[1]:].tolist()
            logprobs = torch.stack(result.logits, dim=1).float().log_softmax(-1)  # [B, steps, V]
            top = logprobs.topk(min(self.top_logprobs, logprobs.shape[-1]), dim=-1)
            for tokens, values, indices in zip(new, top.values.tolist(), top.indices.tolist(), strict=True):
                length = self._length(tokens)
                outputs.append(GreedyOutput(
                    tokens=self._texts(tokens[:length]),
                    top_logprobs=[list(zip(self._texts(indices[i]), values[i], strict=True)) for i in range(length)],
                ))
        return outputs

    def _length(self, tokens: list[int]) -> int:
        """Generated tokens up to and including the first EOS (the rest is padding)."""
        eos = self.tokenizer.eos_token_id
        return tokens.index(eos) + 1 if eos in tokens else len(tokens)

    def _texts(self, ids: list[int]) -> list[str]:
        return self.tokenizer.batch_decode([[i] for i in ids])

    def close(self) -> None:
        del self.network
        release_memory()


class VllmGreedy:
    """Greedy decoding with vLLM over `tensor_parallel_size` GPUs (default: every visible GPU)."""

    def __init__(self, folder: Path, *, max_new_tokens: int, top_logprobs: int, dtype: str,
                 trust_remote_code: bool, tensor_parallel_size: int | None, gpu_memory_utilization: float,
                 max_model_len: int | None, **unused: Any):
        from vllm import LLM, SamplingParams

        self.llm = LLM(
            model=str(folder), tokenizer=str(folder), trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size or max(torch.cuda.device_count(), 1),
            dtype="bfloat16" if dtype == "auto" else dtype, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, seed=0,
        )
        self.tokenizer = self.llm.get_tokenizer()
        # Explicit parameters: the checkpoint's generation_config (repetition penalty, …) is not applied.
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, logprobs=top_logprobs)

    def generate(self, conversations: Sequence[Conversation]) -> list[GreedyOutput]:
        prompts = [{"prompt_token_ids": chat_token_ids(self.tokenizer, c)} for c in conversations]
        results = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        return [vllm_output(result.outputs[0], self.tokenizer) for result in results]

    def close(self) -> None:
        del self.llm
        release_memory()


def vllm_output(completion: Any, tokenizer) -> GreedyOutput:
    """A vLLM CompletionOutput (token_ids, logprobs: per step {token id: Logprob}) as a GreedyOutput."""
    def text(token_id: int, decoded: str | None = None) -> str:
        return decoded if decoded is not None else tokenizer.decode([token_id])

    steps = completion.logprobs or []
    return GreedyOutput(
        tokens=[text(t) for t in completion.token_ids],
        top_logprobs=[[(text(t, lp.decoded_token), float(lp.logprob)) for t, lp in step.items()] for step in steps],
    )

