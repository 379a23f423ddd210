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
    ("reward.positions=relative", "reward.positions"),
    ("model.decode=half", "model.decode"),
    ("sampler.num_samples=0", "sampler.num_samples"),
    ("sampler.max_new_tokens=0", "sampler.max_new_tokens"),
    ("sampler.batch_size=0", "sampler.batch_size"),
    ("schedule.steps=0", "schedule.steps"),
    ("schedule.eps=1.0", "schedule.eps"),
    ("schedule.alg_temp=-0.5", "schedule.alg_temp"),
    ("schedule.order_from=sideways", "schedule.order_from"),
    ("model.dtype=int8", "model.dtype"),
    ("reward.dtype=int4", "reward.dtype"),
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


def test_bad_logger_mode_names_the_key(compose):
    with pytest.raises(ConfigError, match=r"^logger\.mode="):
        validate(compose(["logger=wandb", "logger.mode=sometimes"]))


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
    assert result.returncode != 0
    assert "Available options in 'guidance'" in result.stderr
    for option in _options("guidance"):
        assert f"\t{option}\n" in result.stderr


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
