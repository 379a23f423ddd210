"""Each component's parameters are declared once, in its config dataclass (issue 13)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
from hydra.utils import get_class

import entrgi
import entrgi.config  # noqa: F401  (imports every built-in component)
from entrgi.components import build


def _config_classes() -> list[type]:
    found: dict[type, None] = {}
    for info in pkgutil.walk_packages(entrgi.__path__, "entrgi."):
        if info.name.startswith("entrgi.toy.weights"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__:
                found[obj] = None
    return list(found)


def test_no_constructor_parameter_repeats_a_config_field():
    """A component named by a config's `_target_` takes the config, not its fields one by one."""
    pairs, repeated = 0, {}
    for config in _config_classes():
        target = {f.name: f.default for f in dataclasses.fields(config)}.get("_target_")
        if not isinstance(target, str) or "." not in target:
            continue
        cls = get_class(target)
        pairs += 1
        fields = {f.name for f in dataclasses.fields(config)}
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        if set(params) & fields:
            repeated[f"{config.__name__} -> {cls.__name__}"] = sorted(set(params) & fields)
    assert pairs >= 10  # the scan found the components (model, reward, guidance, schedules, …)
    assert repeated == {}


def test_build_passes_the_config_object_and_the_dependencies(compose):
    cfg = compose(["experiment=tiny", "schedule=low_confidence", "schedule.block_length=4", "schedule.steps=8"])
    schedule = build(cfg.schedule)
    assert type(schedule).__name__ == "LowConfidenceSchedule"
    assert schedule.config.block_length == 4 and schedule.steps == 8 and len(schedule.grid) == 9
    guidance = build(compose(["guidance=none"]).guidance, model=None, reward=None)
    assert type(guidance).__name__ == "NoGuidance"


def test_build_refuses_a_node_without_a_schema():
    from omegaconf import OmegaConf

    with pytest.raises(TypeError, match="extends no schema"):
        build(OmegaConf.create({"_target_": "entrgi.guidance.NoGuidance"}))
