"""Building a component from its config node: the config dataclass is the component's one schema.

Each component class takes its config object (an instance of the dataclass its group's YAML
extends, `entrgi.schemas`) plus the other components it depends on, e.g.
`RewardGradientGuidance(config, model=..., reward=...)`, so a parameter is declared once, in the
dataclass, with its type, default and range. `build` turns a composed node into that call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf


def build(node: DictConfig, **dependencies: Any) -> Any:
    """`cls(config, **dependencies)`, `cls` named by the node's `_target_`, `config` its dataclass instance.

    Interpolations are resolved (`${sampler.temperature}` reads the run config the node belongs to).
    Raises TypeError when the node is not typed by a config dataclass (a YAML that extends no schema).
    """
    return construct(OmegaConf.to_object(node), **dependencies)


def construct(config: Any, **dependencies: Any) -> Any:
    """`cls(config, **dependencies)` for a config dataclass instance, `cls` named by its `_target_` (a
    component whose config holds others', e.g. `reward=sum`'s terms, builds them with this).

    Raises TypeError when `config` is not a dataclass instance (its node extended no schema).
    """
    if not dataclasses.is_dataclass(config):
        target = config.get("_target_") if isinstance(config, dict) else type(config).__name__
        raise TypeError(f"{target}: its config node extends no schema dataclass (see entrgi.schemas)")
    return get_class(config._target_)(config, **dependencies)
