"""Hydra config groups, the paper defaults, validation, and the command line's failure modes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class

from entrgi.components import build
from entrgi.validation import ConfigError, validate

GROUPS = ("model", "reward", "guidance", "schedule", "benchmark", "logger")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUP_OPTIONS = [(group, option) for group in GROUPS for option in _options(group)]
EXPERIMENTS = _options("experiment")


def test_every_group_has_options():
    for group in GROUPS:
        assert _options(group), f"conf/{group} has no options"
    assert "tiny" in EXPERIMENTS


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes_and_validates(compose, group, option):
    """Each option composes over the defaults, names an importable class, and passes validation."""
    cfg = compose([f"{group}={option}"])
    validate(cfg)
    assert isinstance(get_class(cfg[group]._target_), type)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(compose, name):
    validate(compose([f"experiment={name}"]))


SCHEDULE_CLASSES = {
    "entropy": "EntropySchedule",
    "maskgit_plus": "MaskGitPlusSchedule",
    "topk_margin": "TopKMarginSchedule",
    "origin": "OriginSchedule",
}


@pytest.mark.parametrize("option,cls", SCHEDULE_CLASSES.items())
def test_schedule_options_build_the_named_rule(compose, option, cls):
    """The four Dream rule names map to the right classes (a swapped _target_ would be silent)."""
    schedule = build(compose([f"schedule={option}", "schedule.steps=7"]).schedule)
    assert type(schedule).__name__ == cls
    assert schedule.steps == 7 and len(schedule.grid) == 8


def test_defaults_are_the_paper_setup(compose):
    """SPEC §6: Dream-7B, Skywork 1.7B, entropy rule, Reward-Bench-2, K=4, T=128, L=128, τ=0.7, top_p=0.95."""
    cfg = compose([])
    assert cfg.model.path == "Dream-org/Dream-v0-Instruct-7B"
    assert cfg.model.mask_token_id == 151666 and cfg.model.eos_token_id == 151643
    assert cfg.model.logit_shift is True
    assert cfg.reward.path == "Skywork/Skywork-Reward-V2-Qwen3-1.7B"
    assert cfg.schedule._target_ == "entrgi.schedule.EntropySchedule" and cfg.schedule.steps == 128
    assert cfg.schedule.deprioritize_eos is True and cfg.schedule.alg_temp == 0.0
    assert (cfg.benchmark.name, cfg.benchmark.split, cfg.benchmark.n_prompts) == ("reward-bench-2", "test", 64)
    s = cfg.sampler
    assert (s.num_samples, s.max_new_tokens, s.temperature, s.top_p) == (4, 128, 0.7, 0.95)
    assert cfg.seed == 1


def test_tiny_experiment_selects_the_toy_world(compose):
    from entrgi.toy.world import toy_world_path

    cfg = compose(["experiment=tiny"])
    assert cfg.model.path == str(toy_world_path("dllm"))
    assert cfg.reward.path == str(toy_world_path("reward"))
    assert cfg.benchmark.name == "tiny"
    assert cfg.model.device == "cpu"


BAD_VALUES = [
    ("sampler.top_p=1.5", "sampler.top_p"),
    ("sampler.top_p=0", "sampler.top_p"),
    ("sampler.temperature=-0.1", "sampler.temperature"),
    ("sampler.top_k=0", "sampler.top_k"),
    ("sampler.num_samples=0", "sampler.num_samples"),
    ("sampler.max_new_tokens=0", "sampler.max_new_tokens"),
    ("sampler.batch_size=0", "sampler.batch_size"),
    ("schedule.steps=0", "schedule.steps"),
    ("schedule.eps=1.0", "schedule.eps"),
    ("schedule.alg_temp=-0.5", "schedule.alg_temp"),
    ("reward.batch_size=0", "reward.batch_size"),
    ("benchmark.n_prompts=0", "benchmark.n_prompts"),
    ("guidance.rule=bogus", "guidance.rule"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_values_name_the_key_and_the_allowed_range(compose, override, key):
    cfg = compose([override])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert message.startswith(f"{key}="), message
    assert "expected" in message and "\n" not in message


def test_error_names_the_key_the_user_set_not_an_interpolated_copy(compose):
    """Guidance methods copy `${sampler.top_p}`; a bad value is still reported as sampler.top_p."""
    cfg = compose(["guidance=entrgi", "sampler.top_p=1.5"])
    with pytest.raises(ConfigError, match=r"^sampler\.top_p=1\.5 "):
        validate(cfg)


# Fields with a fixed set of values are StrEnums: OmegaConf refuses another value at composition.
ENUM_VALUES = [
    ("model.decode=half", "model.decode", "whole, to_stop"),
    ("model.dtype=int8", "model.dtype", "auto, bfloat16, float16, float32"),
    ("reward.dtype=int4", "reward.dtype", "auto, bfloat16, float16, float32"),
    ("reward.positions=relative", "reward.positions", "absolute, visible"),
    ("reward.hide_from=pad", "reward.hide_from", "eos, stop"),
    ("reward.text_path=raw", "reward.text_path", "template, splice"),
    ("schedule.order_from=sideways", "schedule.order_from", "drawn, guided, unguided"),
    ("schedule.order_temperature=hot", "schedule.order_temperature", "sampling, untempered"),
    ("benchmark.truncate=right", "benchmark.truncate", "none, left"),
    ("guidance.optimizer=lbfgs", "guidance.optimizer", "adam, sgd"),
    ("guidance.keep=first", "guidance.keep", "last, best"),
    ("guidance.eos_mask_from=greedy", "guidance.eos_mask_from", "argmax, sampled"),
    ("logger.mode=sometimes", "logger.mode", "auto, online, offline, disabled"),
    ("evaluator.oracle.responses=top2", "evaluator.oracle.responses", "top1, all"),
    ("evaluator=[lmunit] evaluator.lmunit.backend=sglang", "evaluator.lmunit.backend",
     "auto, vllm, transformers"),
    ("evaluator=[lmunit] evaluator.lmunit.scoring=lenient", "evaluator.lmunit.scoring",
     "paper, strict"),
]


@pytest.mark.parametrize("overrides,key,allowed", ENUM_VALUES, ids=[k for _, k, _ in ENUM_VALUES])
def test_a_value_outside_a_fields_enum_fails_at_composition_naming_the_key(compose, overrides, key, allowed):
    from omegaconf.errors import ValidationError

    from entrgi.cli import describe

    with pytest.raises(ConfigCompositionException) as info:
        compose(["experiment=tiny", "logger=wandb", *overrides.split()])
    assert isinstance(info.value.__cause__, ValidationError) and info.value.__cause__.full_key == key
    bad = overrides.split()[-1].split("=")[1]
    assert describe(info.value) == f"{key}: Invalid value '{bad}', expected one of [{allowed}]"


def test_enum_fields_compare_as_and_save_as_plain_strings(compose, tmp_path):
    """A StrEnum value equals its string, and every saved form of the config holds the plain string."""
    import json

    import yaml
    from omegaconf import OmegaConf

    from entrgi.models.diffusion_lm import Decode
    from entrgi.run_directory import RunDirectory, comparable_config

    cfg = compose(["experiment=tiny", "fidelity=consistent", "logger=wandb", "logger.mode=offline"])
    assert cfg.model.decode is Decode.to_stop and cfg.model.decode == "to_stop" and f"{cfg.model.decode}" == "to_stop"
    text = OmegaConf.to_yaml(cfg, resolve=True)
    assert "!!" not in text and "Decode" not in text
    assert yaml.safe_load(text)["model"]["decode"] == "to_stop"
    assert comparable_config(cfg)["model.decode"] == "to_stop"
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # what W&B and run.json get
    assert json.loads(json.dumps(container))["logger"]["mode"] == "offline"
    assert type(container["reward"]["positions"]) is str
    RunDirectory(tmp_path).write_metadata(cfg, {})
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["decode"] == "to_stop" and saved["reward"]["text_path"] == "splice"
    assert type(saved["schedule"]["order_from"]) is str


def test_good_edge_values_pass(compose):
    """The ranges' closed ends are accepted: top_p = 1, alg_temp = 0, n_prompts unset."""
    validate(compose(["sampler.top_p=1.0", "schedule.alg_temp=0", "benchmark.n_prompts=null"]))


@pytest.mark.parametrize("override", ["schedule.steps=abc", "schedule.stepz=3", "sampler.topp=0.5"])
def test_wrong_types_and_unknown_keys_fail_at_composition(compose, override):
    with pytest.raises(ConfigCompositionException):
        compose([override])


def test_run_experiment_validates_before_anything_else(compose, tmp_path):
    """A bad value fails before any weights are looked up or any file is written."""
    from entrgi.experiment import run_experiment

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^schedule\.steps="):
        run_experiment(compose(["schedule.steps=0"]), out)  # the default 7B weights are absent
    assert not out.exists()


# ----------------------------------------------------------------------------- the command line


def _cli(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "HF_HOME": str(cwd / "hf-home")}
    return subprocess.run(
        [sys.executable, "-m", "entrgi.run", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False,
        timeout=timeout,
    )


@pytest.mark.slow
def test_cli_unknown_option_lists_the_valid_ones(tmp_path):
    result = _cli(["guidance=nosuch"], tmp_path)
    assert result.returncode == 2
    options = ", ".join(_options("guidance"))
    assert result.stderr.splitlines() == [f"entrgi: error: guidance=nosuch: no such option; the options are {options}"]


@pytest.mark.slow
def test_cli_default_config_without_weights_fails_fast_with_one_line(tmp_path):
    """The paper's 7B setup with an empty cache, offline: one line pointing at experiment=tiny, within the
    30 s subprocess timeout (which fails the test by raising)."""
    result = _cli([], tmp_path, timeout=30)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "model.path" in lines[0] and "experiment=tiny" in lines[0]


@pytest.mark.slow
def test_cli_bad_value_exits_with_one_line_naming_the_key(tmp_path):
    result = _cli(["experiment=tiny", "sampler.top_p=1.5"], tmp_path)
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "sampler.top_p=1.5" in lines[0], lines
