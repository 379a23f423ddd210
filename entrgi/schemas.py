"""Where each config group's schema is declared: `@schema(group, name)` on its dataclass.

A group's YAML options extend a schema (`defaults: [/schema/<group>/<name>@_here_]`), so a
misspelt key or a wrong type fails at composition. The decorator stores the dataclass in Hydra's
ConfigStore from its own module, so a new component with new fields is its module plus its YAML,
with no central list to edit (`entrgi.config` imports the modules that hold the built-in ones).
"""

from __future__ import annotations

from collections.abc import Callable

from hydra.core.config_store import ConfigStore


def schema(group: str, name: str = "base") -> Callable[[type], type]:
    """Class decorator: store the dataclass as `schema/<group>/<name>` in Hydra's ConfigStore."""

    def store(cls: type) -> type:
        ConfigStore.instance().store(group=f"schema/{group}", name=name, node=cls)
        return cls

    return store
