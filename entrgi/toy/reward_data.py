"""What the toy RM learns from: responses of every quality, each labelled by the oracle.

A reward model only ranks well the kind of responses it was trained on. Guidance shows it
the dLLM's own samples, their near misses and, mid-optimisation, odd token mixtures; so the
labelled set mixes corpus responses (right on some attributes, wrong on others), the
trained dLLM's samples, and corruptions of both: a slot word swapped for another of its
kind (still grammatical, a different score), and broken sentences (words dropped,
repeated, swapped, replaced, cut off), which the oracle scores 0.
"""

from __future__ import annotations

import random
import re

import torch

from entrgi.guidance import NoGuidance
from entrgi.models import DiffusionLM
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, ScheduleConfig
from entrgi.toy.grammar import LEXICON, PREPOSITIONS, parse_prompt, sample_response, sample_scene
from entrgi.toy.oracle import oracle

_WORDS = re.compile(r"\w+|[^\w\s]")
_SLOT_OF = {word: field for field, words in LEXICON.items() for word in words}
_FILLERS = ("The", "A", "the", "It", "is", "In", ",", ".", *PREPOSITIONS)


def _join(words: list[str]) -> str:
    return re.sub(r" ([.,])", r"\1", " ".join(words))


def swap_slot(response: str, rng: random.Random) -> str:
    """The response with one attribute word replaced by another of its kind (grammar kept)."""
    words = _WORDS.findall(response)
    slots = [i for i, w in enumerate(words) if w in _SLOT_OF]
    if not slots:
        return response
    i = rng.choice(slots)
    words[i] = rng.choice([w for w in LEXICON[_SLOT_OF[words[i]]] if w != words[i]])
    return _join(words)


def break_sentence(response: str, rng: random.Random) -> str:
    """The response with its grammar broken in one of the ways a sampler can break it."""
    words = _WORDS.findall(response)
    if len(words) < 2:
        return response + " ."
    i = rng.randrange(len(words))
    kind = rng.randrange(6)
    if kind == 0:
        del words[i]
    elif kind == 1:
        words.insert(i, words[i])
    elif kind == 2:
        j = i + 1 if i + 1 < len(words) else i - 1
        words[i], words[j] = words[j], words[i]
    elif kind == 3:
        words[i] = rng.choice([*_SLOT_OF, *_FILLERS])
    elif kind == 4:
        words = words[: max(1, i)]
    else:
        words += _WORDS.findall(rng.choice(["It is " + rng.choice(LEXICON["color"]) + ".", "The", "in the"]))
    return _join(words)


def sample_responses(model: DiffusionLM, prompts: list[str], seed: int, temperature: float, num_samples: int,
                     length: int = 16, batch_size: int = 64) -> list[tuple[str, str]]:
    """(prompt, response) for `num_samples` unguided samples per prompt (prompt-major), drawn with the
    tiny experiment's schedule (entropy rule, T = L = 16, top-p 0.95)."""
    sampler = DiffusionSampler(
        SamplerConfig(num_samples=num_samples, max_new_tokens=length, temperature=temperature, top_p=0.95), model=model,
        schedule=EntropySchedule(ScheduleConfig(steps=length)), guidance=NoGuidance(),
    )
    pairs = []
    with torch.no_grad():
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first : first + batch_size]
            ids = [f"toy-{first + i}" for i in range(len(batch))]
            rows = sampler.generate(batch, ids, seed=seed).responses.tolist()
            pairs += [(batch[i // num_samples], model.decode(row)) for i, row in enumerate(rows)]
    return pairs


def labelled(pairs: list[tuple[str, str]], rng: random.Random, swaps: float = 0.5,
             breaks: float = 0.5) -> list[tuple[str, str, float]]:
    """(prompt, response, oracle score) for each pair, plus a slot swap and a broken copy of some."""
    out = []
    for prompt, response in pairs:
        out.append((prompt, response, oracle(prompt, response)))
        if rng.random() < swaps:
            swapped = swap_slot(response, rng)
            out.append((prompt, swapped, oracle(prompt, swapped)))
        if rng.random() < breaks:
            broken = break_sentence(response, rng)
            out.append((prompt, broken, oracle(prompt, broken)))
    return out


def evaluation_set(samples: list[tuple[str, str]], seed: int) -> list[tuple[str, str, float]]:
    """Labelled held-out responses: the given dLLM samples and as many corpus-like responses to the
    same prompts (mixed quality, like the training data), each with a slot swap and a broken copy."""
    rng = random.Random(seed)
    corpus_like = [(p, sample_response(sample_scene(parse_prompt(p), rng), rng)) for p, _ in samples]
    return labelled(samples + corpus_like, rng, swaps=1.0, breaks=1.0)
