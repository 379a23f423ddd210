"""The toy world's language: prompts that request a scene, responses that describe one.

A prompt asks for two to four attributes of a scene (which animal, its colour, what it
does, where); a response describes one scene in one of a few sentence forms. Every word is
a whole token of the toy tokenizers, so a response is 5 to 11 dLLM tokens and "fixing" a
response means changing one or two tokens: the target reward guidance needs.

The generators and the parsers are exact inverses: `parse_prompt(render_prompt(r)) == r`
and `parse_response(render_response(s)) == s`, which is what lets the oracle score text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection
from dataclasses import dataclass

ANIMALS = ("cat", "dog", "fox", "owl", "duck", "horse", "bear", "frog")
COLORS = ("red", "blue", "green", "black", "white", "brown", "grey", "yellow")
ACTIONS = ("sleeps", "runs", "swims", "sings", "jumps", "hides", "eats", "climbs")
PLACES = ("garden", "forest", "river", "house", "field", "barn", "park", "lake")
PREPOSITIONS = ("in", "by", "near")
LEXICON = {"animal": ANIMALS, "color": COLORS, "action": ACTIONS, "place": PLACES}

# What each animal cannot do: a scene with one of these is incoherent.
IMPLAUSIBLE = {
    "cat": ("swims", "sings"),
    "dog": ("sings", "climbs"),
    "fox": ("sings", "swims"),
    "owl": ("swims", "runs"),
    "duck": ("climbs", "jumps"),
    "horse": ("climbs", "sings"),
    "bear": ("sings", "jumps"),
    "frog": ("climbs", "runs"),
}


def plausible(animal: str, action: str) -> bool:
    """Whether the animal can do the action (the coherence check of the oracle)."""
    return action not in IMPLAUSIBLE[animal]


@dataclass(frozen=True)
class Scene:
    """What a response says. `place` is None when the response does not say where."""

    animal: str
    color: str
    action: str
    place: str | None = None


@dataclass(frozen=True)
class Request:
    """What a prompt asks for: the attributes it names (None = left to the response), and its wording."""

    template: str
    animal: str | None = None
    color: str | None = None
    action: str | None = None
    place: str | None = None
    preposition: str = "in"

    def constraints(self) -> dict[str, str]:
        """The attributes a good response must match."""
        return {field: getattr(self, field) for field in LEXICON if getattr(self, field) is not None}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Prompt templates: name -> (wording, the attributes it names). `{a_X}` is X with its article.
PROMPT_TEMPLATES = {
    "describe": ("Describe {a_color} {animal}.", ("color", "animal")),
    "tell": ("Tell me about {a_animal} that {action}.", ("animal", "action")),
    "something": ("Tell me about something {color} that {action}.", ("color", "action")),
    "write": ("Write about {a_color} {animal} {preposition} the {place}.", ("color", "animal", "place")),
    "what": ("What does the {color} {animal} do {preposition} the {place}?", ("color", "animal", "place")),
    "line": ("Write a line about {a_animal} that {action} {preposition} the {place}.", ("animal", "action", "place")),
    "full": ("Describe {a_color} {animal} that {action} {preposition} the {place}.",
             ("color", "animal", "action", "place")),
}


def render_prompt(request: Request) -> str:
    wording, _ = PROMPT_TEMPLATES[request.template]
    values = {field: getattr(request, field) for field in LEXICON} | {"preposition": request.preposition}
    articles = {f"a_{field}": f"{_article(v)} {v}" for field, v in values.items() if v is not None}
    return wording.format(**values, **articles)


def _pattern(wording: str) -> re.Pattern[str]:
    """The regular expression that reads a template back: one named group per slot."""
    slots = {"preposition": "|".join(PREPOSITIONS), **{field: "|".join(words) for field, words in LEXICON.items()}}
    pattern = re.escape(wording)
    for field, alternatives in slots.items():
        pattern = pattern.replace(re.escape(f"{{a_{field}}}"), f"an? (?P<{field}>{alternatives})")
        pattern = pattern.replace(re.escape(f"{{{field}}}"), f"(?P<{field}>{alternatives})")
    return re.compile(pattern)


_PROMPT_PATTERNS = {name: _pattern(wording) for name, (wording, _) in PROMPT_TEMPLATES.items()}


def parse_prompt(prompt: str) -> Request:
    """The request a toy prompt makes; ValueError for text that is not a toy prompt."""
    for name, pattern in _PROMPT_PATTERNS.items():
        match = pattern.fullmatch(prompt.strip())
        if match:
            request = Request(template=name, **match.groupdict())
            if render_prompt(request) == prompt.strip():  # articles must be the right ones
                return request
    raise ValueError(f"not a toy-world prompt: {prompt!r}")


# Response forms. `lead` and `trail` may leave the place out; `front` names it first.
RESPONSE_FORMS = {
    "lead": ("The {color} {animal} {action} {preposition} the {place}.", "The {color} {animal} {action}."),
    "lead_a": ("A {color} {animal} {action} {preposition} the {place}.", "A {color} {animal} {action}."),
    "trail": (
        "The {animal} {action} {preposition} the {place}. It is {color}.", "The {animal} {action}. It is {color}."
    ),
    "front": ("In the {place}, the {color} {animal} {action}.", None),
}
_RESPONSE_PATTERNS = [
    _pattern(wording) for with_place, without in RESPONSE_FORMS.values() for wording in (with_place, without) if wording
]


def render_response(scene: Scene, form: str = "lead", preposition: str = "in") -> str:
    with_place, without = RESPONSE_FORMS[form]
    wording = with_place if scene.place is not None else without
    if wording is None:
        raise ValueError(f"response form {form!r} needs a place")
    return wording.format(animal=scene.animal, color=scene.color, action=scene.action, place=scene.place,
                          preposition=preposition)


def parse_response(response: str) -> Scene | None:
    """The scene a response describes, or None when it is not a sentence of the toy language
    (ungrammatical, truncated, repeated, or with anything before or after it)."""
    for pattern in _RESPONSE_PATTERNS:
        match = pattern.fullmatch(response.strip())
        if match:
            groups = match.groupdict()
            return Scene(groups["animal"], groups["color"], groups["action"], groups.get("place"))
    return None


@dataclass(frozen=True)
class Mix:
    """How corpus responses are written. The corpus is of mixed quality, as real instruction data
    is: a requested attribute is often replaced, so the dLLM trained on it leaves room for guidance."""

    keep: float = 0.55  # a requested attribute is used as asked
    drop_place: float = 0.2  # a response leaves the place out (requested or not)
    free_plausible: float = 0.75  # the attribute nobody asked for (animal or action) fits the other
    forms: tuple[str, ...] = tuple(RESPONSE_FORMS)


CORPUS_MIX = Mix()
# Every request honoured, in the one form whose slots sit at fixed positions: the warm-up data
# on which the small dLLM first learns to copy attributes from the prompt (see entrgi.toy.train).
FAITHFUL_MIX = Mix(keep=1.0, drop_place=0.0, free_plausible=1.0, forms=("lead",))


def sample_request(rng: random.Random) -> Request:
    """A prompt's request: a template, and values that are coherent together."""
    template = rng.choice(list(PROMPT_TEMPLATES))
    wording, fields = PROMPT_TEMPLATES[template]
    values = {field: rng.choice(LEXICON[field]) for field in fields}
    if "animal" in values and "action" in values:  # nobody asks for a singing bear
        values["animal"] = rng.choice([a for a in ANIMALS if plausible(a, values["action"])])
    preposition = rng.choice(PREPOSITIONS) if "{preposition}" in wording else Request.preposition
    return Request(template=template, preposition=preposition, **values)


def _other(rng: random.Random, field: str, value: str) -> str:
    return rng.choice([w for w in LEXICON[field] if w != value])


def sample_scene(request: Request, rng: random.Random, mix: Mix = CORPUS_MIX) -> Scene:
    """A scene a corpus response describes for `request`: right on some attributes, wrong on others."""
    values = {}
    for field, asked in request.constraints().items():
        values[field] = asked if rng.random() < mix.keep else _other(rng, field, asked)
    coherent = rng.random() < mix.free_plausible  # some actions fit every animal: then any will do
    if "animal" not in values:  # only prompts that name the action leave the animal free
        fitting = [a for a in ANIMALS if plausible(a, values["action"]) == coherent]
        values["animal"] = rng.choice(fitting or ANIMALS)
    if "action" not in values:
        values["action"] = rng.choice([a for a in ACTIONS if plausible(values["animal"], a) == coherent])
    values.setdefault("color", rng.choice(COLORS))
    if rng.random() < mix.drop_place:
        values["place"] = None
    else:
        values.setdefault("place", rng.choice(PLACES))
    return Scene(**values)


def sample_response(scene: Scene, rng: random.Random, forms: tuple[str, ...] = tuple(RESPONSE_FORMS)) -> str:
    """The scene in one of `forms` (those that can say it: `front` needs a place)."""
    usable = [name for name in forms if scene.place is not None or RESPONSE_FORMS[name][1]]
    return render_response(scene, rng.choice(usable), rng.choice(PREPOSITIONS))


def sample_pair(rng: random.Random, mix: Mix = CORPUS_MIX) -> tuple[str, str]:
    """One (prompt, response) pair of the corpus."""
    request = sample_request(rng)
    return render_prompt(request), sample_response(sample_scene(request, rng, mix), rng, mix.forms)


def benchmark_prompts(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` distinct (template, prompt) pairs, the held-out set the tiny benchmark uses."""
    rng = random.Random(seed)
    prompts: dict[str, str] = {}
    while len(prompts) < n:
        request = sample_request(rng)
        prompts.setdefault(render_prompt(request), request.template)
    return [(template, prompt) for prompt, template in prompts.items()]


def corpus(n: int, seed: int, exclude: Collection[str] = (), mix: Mix = CORPUS_MIX) -> list[tuple[str, str]]:
    """`n` (prompt, response) pairs whose prompts are not in `exclude` (the held-out prompts)."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        prompt, response = sample_pair(rng, mix)
        if prompt not in exclude:
            pairs.append((prompt, response))
    return pairs
