"""The toy world's ground truth: how good a response is for a prompt, computed exactly.

A response that is not a sentence of the toy language (ungrammatical, truncated, repeated,
empty) scores 0. A sentence earns 0.25 for being well formed, and the other 0.75 in equal
parts for each check it passes: every attribute the prompt asks for (animal, colour,
action, place) is the one asked for, and the scene is coherent (the animal can do what it
does). So the score is 0 or one of a few fractions in [0.25, 1], and a response is made
better by changing the one or two words that fail a check.
"""

from __future__ import annotations

from collections.abc import Sequence

from entrgi.toy.grammar import parse_prompt, parse_response, plausible

WELL_FORMED = 0.25


def oracle(prompt: str, response: str) -> float:
    """The true quality of `response` to the toy prompt `prompt`, in [0, 1].

    Raises ValueError when `prompt` is not a toy-world prompt (the oracle knows no other).
    """
    request = parse_prompt(prompt)
    scene = parse_response(response)
    if scene is None:
        return 0.0
    checks = [getattr(scene, field) == value for field, value in request.constraints().items()]
    checks.append(plausible(scene.animal, scene.action))
    return WELL_FORMED + (1 - WELL_FORMED) * sum(checks) / len(checks)


def unknown_prompt(prompts: Sequence[tuple[str, str]]) -> str | None:
    """Why the oracle cannot score responses to these (id, text) prompts (the first that is not a toy
    prompt), or None when it can."""
    for prompt_id, text in prompts:
        try:
            parse_prompt(text)
        except ValueError:
            return f"it knows toy-world prompts only, and prompt {prompt_id!r} is not one ({text[:40]!r})"
    return None
