"""Structured configs: the run schema and each group's schema, registered in Hydra's ConfigStore.

Group YAML files extend these schemas (`defaults: [/schema/<group>/<name>@_here_]`), so a
misspelt key or a wrong type fails at composition, and `entrgi.validation` checks ranges
before any model loads. Importing this module also registers the `entrgi.*` resolvers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

# The modules of the built-in components: importing them stores their schemas (`entrgi.schemas`).
import entrgi.benchmarks  # noqa: F401
import entrgi.evaluators.lmunit  # noqa: F401
import entrgi.evaluators.oracle  # noqa: F401
import entrgi.evaluators.reward  # noqa: F401
import entrgi.guidance  # noqa: F401
import entrgi.loggers  # noqa: F401
import entrgi.models  # noqa: F401
import entrgi.rewards  # noqa: F401
import entrgi.schedule  # noqa: F401
from entrgi.guidance.mix import WEIGHT_RULES
from entrgi.sampler import SamplerConfig
from entrgi.validation import ranged


@dataclass
class RunControl:
    """How a job runs, not what it computes: never part of a job's directory name."""

    # Start afresh: delete the results already in the job's directory instead of resuming.
    overwrite: bool = False
    # torch's CPU threads; unset: 1 when the job runs on the CPU (entrgi.preflight.configure_threads).
    threads: int | None = ranged(None, low=1, optional=True)


@dataclass
class RunConfig:
    """The root config. Group nodes are typed by their own schemas."""

    model: Any = MISSING
    reward: Any = MISSING
    guidance: Any = MISSING
    schedule: Any = MISSING
    benchmark: Any = MISSING
    logger: Any = MISSING
    # Judges applied to the saved responses after generation, {option: config} (`evaluator=[lmunit,reward]`).
    evaluator: Any = field(default_factory=dict)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 1
    name: str = "default"
    fidelity: str = "reference"  # the `fidelity` overlay applied (its keys may still be set alone)
    run: RunControl = field(default_factory=RunControl)


@dataclass
class PerfSettings:
    """What `python -m entrgi.perf` measures."""

    methods: list[str] = field(default_factory=lambda: ["none", "soft", "aps", "entrgi"])
    repeats: int = ranged(3, low=1)
    warmup: int = ranged(1, low=0)
    # Timed calls of each vocabulary-sized operation alone (`entrgi.perf.time_operations`); 0: skip them.
    operation_repeats: int = ranged(5, low=0)
    output: str = "perf.json"


@dataclass
class PerfConfig(RunConfig):
    """The run config plus the benchmark command's own settings."""

    perf: PerfSettings = field(default_factory=PerfSettings)


@dataclass
class EvaluateConfig:
    """The root config of `python -m entrgi.evaluate`: judges applied to finished run directories."""

    runs: list[str] = field(default_factory=list)  # run or sweep directories, globs (positional arguments)
    evaluator: Any = field(default_factory=dict)
    logger: Any = MISSING
    # Leave out runs that already hold an evaluator's judgements (resume an interrupted judging job).
    skip_judged: bool = False


def _random_world_path(part: str, size: str = "tiny") -> str:
    from entrgi.random_world import ensure_random_world

    return str(ensure_random_world(size)[part])


def _toy_world_path(part: str) -> str:
    from entrgi.toy.world import toy_world_path

    return str(toy_world_path(part))


def _tiny_judge_path(part: str) -> str:
    from entrgi.evaluators.tiny import ensure_tiny_judges

    return str(ensure_tiny_judges()[part])


def _basename(path: str) -> str:
    """A checkpoint's name: the last part of a Hub id or folder ('Skywork/Skywork-Reward-V2-Qwen3-8B' -> ...-8B)."""
    return Path(str(path).rstrip("/")).name


def _data_file(name: str) -> str:
    return str(resources.files("entrgi") / "data" / name)


def _job_dir(overrides, seed, shard=0, num_shards=1) -> str:
    from entrgi.sweeps import job_dir_name

    return job_dir_name(overrides, int(seed), int(shard), int(num_shards))


def _sweep_dir(overrides) -> str:
    from entrgi.sweeps import sweep_dir_name

    return sweep_dir_name(overrides)


def _device_slots(devices=None, cpu_jobs=2) -> int:
    from entrgi.devices import device_slots

    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    return device_slots(devices, int(cpu_jobs))


# Gradient steps M that `arm` options exist for (experiment=tiny-study sweeps 1, 2, 3, 4, 6).
ARM_STEPS = range(1, 11)
# Samples (particles) K per prompt that `arm` options exist for (experiment=particle-study).
ARM_SAMPLES = (2, 4, 8, 16, 32, 64)


def _register_arms(cs: ConfigStore) -> None:
    """The `arm` group: one option per study cell, `none` or `<rule>-M<m>` (e.g. `+arm=entrgi-M3`) for
    every registered weight rule (whose `guidance` option has the rule's name), and `<guidance>-K<k>`
    (e.g. `+arm=fk-K8`: the guidance option with K samples per prompt) for every packaged guidance option.

    A product sweep `guidance=none,soft guidance.M=1,3` would give the unguided baseline an M it
    does not have; sweeping arms runs the baseline once per seed and M only where it means something.
    """
    cs.store(group="arm", name="none", node={"defaults": [{"override /guidance": "none"}]}, package="_global_")
    for method in WEIGHT_RULES:
        for steps in ARM_STEPS:
            node = {"defaults": [{"override /guidance": method}], "guidance": {"M": steps}}
            cs.store(group="arm", name=f"{method}-M{steps}", node=node, package="_global_")
    for method in sorted(_guidance_options()):
        for k in ARM_SAMPLES:
            node = {"defaults": [{"override /guidance": method}], "sampler": {"num_samples": k}}
            cs.store(group="arm", name=f"{method}-K{k}", node=node, package="_global_")


def _guidance_options() -> list[str]:
    """The packaged `guidance` options (conf/guidance/*.yaml)."""
    return [entry.name.removesuffix(".yaml") for entry in resources.files("entrgi.conf").joinpath("guidance").iterdir()
            if entry.name.endswith(".yaml")]


def register() -> None:
    """Put the root schemas and the arms in the ConfigStore and the resolvers in OmegaConf (idempotent).

    The groups' schemas are stored by their own modules (`entrgi.schemas.schema`)."""
    cs = ConfigStore.instance()
    # The root schema is a group of its own so that `perf.yaml` can swap it for PerfConfig.
    cs.store(group="root", name="run", node=RunConfig, package="_global_")
    cs.store(group="root", name="perf", node=PerfConfig, package="_global_")
    cs.store(group="root", name="evaluate", node=EvaluateConfig, package="_global_")
    _register_arms(cs)
    # The random worlds (format tests, perf-mid) and the trained toy world (experiment=tiny).
    OmegaConf.register_new_resolver("entrgi.random_world", _random_world_path, replace=True)
    OmegaConf.register_new_resolver("entrgi.toy_world", _toy_world_path, replace=True)
    OmegaConf.register_new_resolver("entrgi.data", _data_file, replace=True)
    OmegaConf.register_new_resolver("entrgi.tiny_judge", _tiny_judge_path, replace=True)
    OmegaConf.register_new_resolver("entrgi.basename", _basename, replace=True)
    # Directory names (entrgi.sweeps). The sweep's is cached: resolved once in the launching
    # process, the cache is copied into each job's config (as for Hydra's ${now:}).
    OmegaConf.register_new_resolver("entrgi.job_dir", _job_dir, replace=True)
    OmegaConf.register_new_resolver("entrgi.sweep_dir", _sweep_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("entrgi.device_slots", _device_slots, replace=True)


register()
