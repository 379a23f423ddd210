"""A whole tiny job: the run directory's files and what they must say (issue 2, item 6)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from entrgi.experiment import run_experiment
from entrgi.toy.world import toy_world_path

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment=tiny", "guidance=none", "logger=none"]


def _samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(compose, tmp_path_factory):
    """One tiny job (32 prompts, K=4, 16 steps), shared by the checks below."""
    out = tmp_path_factory.mktemp("tiny-run")
    summary = run_experiment(compose(TINY), out)
    return out, summary


def test_samples_jsonl(tiny_run, toy_reward):
    """One line per prompt; Top@1 = max and Avg@K = mean of the K rewards, which are the RM's text scores."""
    out, _ = tiny_run
    records = _samples(out)
    assert [r["prompt_id"] for r in records] == [f"tiny-{i}" for i in range(32)]
    for r in records:
        assert {"prompt_id", "prompt", "responses", "rewards", "best_index", "top1", "avgk"} <= set(r)
        assert len(r["responses"]) == len(r["rewards"]) == 4
        assert all(isinstance(t, str) for t in r["responses"])
        assert r["top1"] == max(r["rewards"])
        assert r["rewards"][r["best_index"]] == r["top1"]
        assert r["avgk"] == pytest.approx(sum(r["rewards"]) / 4)
    assert records[0]["prompt"] == "Describe a grey frog that sleeps by the field."
    # the stored rewards are the RM's scores of the stored (decoded) responses
    rescored = toy_reward.score_texts([records[0]["prompt"]] * 4, records[0]["responses"]).tolist()
    assert rescored == pytest.approx(records[0]["rewards"], abs=1e-4)


def test_summary_json(tiny_run):
    out, summary = tiny_run
    written = json.loads((out / "summary.json").read_text())
    assert written == summary
    records = _samples(out)
    assert written["top1_mean"] == pytest.approx(sum(r["top1"] for r in records) / len(records))
    assert written["avgk_mean"] == pytest.approx(sum(r["avgk"] for r in records) / len(records))
    assert written["top1_mean"] >= written["avgk_mean"]
    assert written["n_prompts"] == 32
    assert written["seed"] == 1
    assert written["guidance"] == "none"
    assert written["wall_seconds"] > 0


def test_config_and_run_metadata(tiny_run):
    """The resolved config (no interpolations left) and the code revision are recorded."""
    out, _ = tiny_run
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["path"] == str(toy_world_path("dllm"))
    assert config["sampler"]["num_samples"] == 4 and config["schedule"]["steps"] == 16
    assert "${" not in (out / "config.yaml").read_text()
    meta = json.loads((out / "run.json").read_text())
    assert set(meta["git"]) >= {"commit", "dirty"}
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", meta["git"]["commit"])
        assert isinstance(meta["git"]["dirty"], bool)
    assert meta["prompt_ids"] == [f"tiny-{i}" for i in range(32)]
    assert meta["seed"] == 1


@pytest.mark.slow
def test_same_seed_reproduces_and_other_seed_resamples_the_same_prompts(compose, tiny_run, tmp_path):
    out, _ = tiny_run
    again = run_experiment(compose(TINY), tmp_path / "again")

    def computed(run_dir: Path) -> list[dict]:  # all but the wall seconds of the compute accounting
        return [{**r, "compute": {**r["compute"], "wall_seconds": None}} for r in _samples(run_dir)]

    assert computed(tmp_path / "again") == computed(out)
    assert again["top1_mean"] == json.loads((out / "summary.json").read_text())["top1_mean"]
    run_experiment(compose(TINY + ["seed=2"]), tmp_path / "seed2")
    other = _samples(tmp_path / "seed2")
    assert [r["prompt_id"] for r in other] == [r["prompt_id"] for r in _samples(out)]
    assert [r["responses"] for r in other] != [r["responses"] for r in _samples(out)]


@pytest.mark.slow
def test_batch_size_does_not_change_the_results(compose, tmp_path):
    """sampler.batch_size 1 and 4 write the same responses (τ = 0.1: see test_sampler on why).

    Rewards are compared to float tolerance: the RM pads each batch differently.
    """
    overrides = TINY + ["sampler.temperature=0.1", "sampler.num_samples=2", "schedule.steps=8",
                        "sampler.max_new_tokens=8"]
    run_experiment(compose(overrides + ["sampler.batch_size=1"]), tmp_path / "b1")
    run_experiment(compose(overrides + ["sampler.batch_size=4"]), tmp_path / "b4")
    one, four = _samples(tmp_path / "b1"), _samples(tmp_path / "b4")
    assert [r["responses"] for r in one] == [r["responses"] for r in four]
    for a, b in zip(one, four, strict=True):
        assert a["rewards"] == pytest.approx(b["rewards"], abs=1e-5)


@pytest.mark.slow
def test_cli_tiny_run_prints_top1_and_avgk(tmp_path):
    """`python -m entrgi.run experiment=tiny` (default W&B logger, disabled) finishes and reports."""
    out = tmp_path / "job"
    # One thread: beside other jobs, two threads that wait on each other can run many times slower.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "entrgi.run", "experiment=tiny", f"hydra.run.dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"Top@1 -?\d+\.\d+ +Avg@4 -?\d+\.\d+", result.stdout), result.stdout
    for name in ("samples.jsonl", "summary.json", "config.yaml", "run.json"):
        assert (out / name).is_file(), name
    assert len(_samples(out)) == 32
