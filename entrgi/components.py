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
    cls = get_class(node._target_)
    config = OmegaConf.to_object(node)
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"{node._target_}: its config node extends no schema dataclass (see entrgi.schemas)")
    return cls(config, **dependencies)
