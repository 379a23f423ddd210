"""Value checks declared next to config fields, run before any model loads.

OmegaConf already enforces types, and a field with a fixed set of values is typed by a `StrEnum`
(e.g. `entrgi.models.diffusion_lm.Decode`), so a value outside it fails at composition
(`entrgi.cli` turns that into one line). Ranges and registered names live in the field metadata
of the structured configs so that a wrong value fails with one line naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

_CHECK = "entrgi_check"


class ConfigError(ValueError):
    """A config value outside what the framework accepts; the message names the key."""


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        left = "-inf" if self.low is None else f"{self.low}"
        right = "inf" if self.high is None else f"{self.high}"
        lb = "(" if self.low_open or self.low is None else "["
        rb = ")" if self.high_open or self.high is None else "]"
        return f"a value in {lb}{left}, {right}{rb}"


@dataclass(frozen=True)
class Registered:
    """A name looked up in a registry when the config is checked, so entries added later count too."""

    registry: Mapping[str, Any]

    def accepts(self, value: Any) -> bool:
        return value in self.registry

    def describe(self) -> str:
        return "one of the registered names " + ", ".join(repr(v) for v in self.registry)


def ranged(default: Any, *, low=None, high=None, low_open=False, high_open=False, optional=False):
    """A dataclass field whose value must lie in a range (None allowed when `optional`)."""
    return field(default=default, metadata={_CHECK: Range(low, high, low_open, high_open), "optional": optional})


def registered(default: str, registry: Mapping[str, Any]):
    """A dataclass field whose value must be a key of `registry` at validation time."""
    return field(default=default, metadata={_CHECK: Registered(registry)})


def validate(cfg: DictConfig, prefix: str = "") -> None:
    """Check every declared range in a composed config; raise ConfigError on the first bad key.

    Values set directly are checked before values interpolated from elsewhere, so a bad
    `sampler.top_p` is reported under that name, not under a `${sampler.top_p}` copy.
    """
    for interpolated in (False, True):
        _validate(cfg, prefix, interpolated)


def _validate(cfg: DictConfig, prefix: str, interpolated: bool) -> None:
    schema = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(schema):
        for f in dataclasses.fields(schema):
            rule = f.metadata.get(_CHECK)
            if rule is None or f.name not in cfg or OmegaConf.is_interpolation(cfg, f.name) != interpolated:
                continue
            value = cfg[f.name]
            if value is None and f.metadata.get("optional"):
                continue
            if not rule.accepts(value):
                source = f" (from {cfg._get_node(f.name)._value()})" if interpolated else ""
                raise ConfigError(f"{prefix}{f.name}={value!r}{source} is not allowed: expected {rule.describe()}")
    for key in cfg.keys():
        if str(key).startswith("_") or OmegaConf.is_missing(cfg, key):
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            _validate(child, f"{prefix}{key}.", interpolated)
        elif isinstance(child, ListConfig):
            for i, item in enumerate(child):
                if isinstance(item, DictConfig):
                    _validate(item, f"{prefix}{key}[{i}].", interpolated)
