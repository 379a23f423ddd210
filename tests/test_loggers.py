"""`logger=wandb`: an offline W&B run written by a tiny job holds the per-step curves, the summary,
the samples table and the figures, and is closed even when the job fails (issue 5). Never online."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from entrgi.components import build
from entrgi.experiment import run_experiment
from entrgi.loggers import (
    NullLogger,
    WandbLogger,
    WandbLoggerConfig,
    local_runs,
    sample_table_row,
    step_metrics,
    wandb_run_id,
)
from entrgi.run_directory import RunDirectory

SMALL = ["experiment=tiny", "schedule.steps=4", "sampler.max_new_tokens=6", "benchmark.n_prompts=3",
         "sampler.batch_size=2", "sampler.num_samples=2"]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, with every folder it writes to inside tmp_path and no credentials in sight."""
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    return tmp_path


def _records(run_dir: Path) -> list[dict]:
    """The records of the job's only offline W&B run (see `_decode`)."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    return _decode(offline)


def _decode(offline: Path) -> list[dict]:
    """The records of one offline W&B run directory, decoded by `wandb leet inspect --json`."""
    cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or shutil.which("wandb")
    result = subprocess.run([cli, "leet", "inspect", "--json", str(offline)], capture_output=True, text=True,
                            timeout=60, check=False)
    if result.returncode != 0 and "No such command" in result.stderr:
        pytest.skip("this wandb has no `wandb leet inspect` to decode the run file")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_step_metrics_and_sample_rows():
    row = {"batch": 1, "step": 2, "t": 0.5, "s": 0.25, "masked": 3.0, "entropy_mean": 1.5, "w_mean": 0.4,
           "E_mean": 0.2, "D_mean": 0.3, "reward_curve": [-1.0, -0.5, 0.25]}
    assert step_metrics(row, 7) == {
        "denoise/index": 7, "denoise/step": 2, "denoise/batch": 1, "denoise/t": 0.5, "denoise/masked": 3.0,
        "denoise/entropy": 1.5, "denoise/w": 0.4, "denoise/E": 0.2, "denoise/D": 0.3,
        "denoise/relaxed_reward_iter1": -1.0, "denoise/relaxed_reward_iter2": -0.5,
        "denoise/relaxed_reward_iter3": 0.25, "denoise/relaxed_reward_gain": 1.25,
    }
    assert step_metrics({"step": 0, "t": 1.0, "masked": 6.0}, 0) == {
        "denoise/index": 0, "denoise/step": 0, "denoise/t": 1.0, "denoise/masked": 6.0}
    record = {"prompt_id": "p", "category": "c", "prompt": "q", "responses": ["a", "b"], "rewards": [0.1, 0.9],
              "best_index": 1, "top1": 0.9, "avgk": 0.5}
    assert sample_table_row(record, 2) == ["p", "c", "q", "b", 0.9, 0.5, 0.1, 0.9]


def test_mode_auto(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert WandbLogger(WandbLoggerConfig()).resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbLogger(WandbLoggerConfig()).resolved_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger(WandbLoggerConfig()).resolved_mode() == "disabled"
    assert WandbLogger(WandbLoggerConfig(mode="offline")).resolved_mode() == "offline"


def test_none_logger_logs_nothing(compose, offline_wandb, monkeypatch):
    """logger=none: a whole job never opens a W&B run (even with W&B set to offline) and writes no wandb/."""
    import wandb

    def refuse(*args, **kwargs):
        raise AssertionError("logger=none opened a W&B run")

    monkeypatch.setattr(wandb, "init", refuse)
    out = offline_wandb / "job"
    assert type(build(compose(["logger=none"]).logger)) is NullLogger
    summary = run_experiment(compose(SMALL + ["guidance=none", "logger=none"]), out)
    assert summary["n_prompts"] == 3 and not (out / "wandb").exists()


def test_offline_run_holds_steps_summary_table_and_figures(compose, offline_wandb):
    out = offline_wandb / "job"
    summary = run_experiment(compose(SMALL + ["guidance=entrgi", "logger=wandb", "logger.mode=offline"]), out)
    records = _records(out)

    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["run_group"] == "entrgi" and run["display_name"] == "entrgi-seed1"
    assert run["config"]["update"]["guidance"]["M"] == 3  # the resolved config

    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    steps = [h for h in history if "denoise/index" in h]
    written = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == len(written) == 2 * 4  # 2 batches × T = 4, in order
    assert [h["denoise/index"] for h in steps] == list(range(8))
    for logged, row in zip(steps, written, strict=True):
        assert logged["denoise/E"] == pytest.approx(row["E_mean"])
        assert logged["denoise/entropy"] == pytest.approx(row["entropy_mean"])
        assert logged["denoise/w"] == pytest.approx(row["w_mean"])
        assert logged["denoise/D"] == pytest.approx(row["D_mean"])
        assert [logged[f"denoise/relaxed_reward_iter{i}"] for i in (1, 2, 3)] == pytest.approx(row["reward_curve"])
    progress = [h for h in history if "prompts_done" in h]
    assert [h["prompts_done"] for h in progress] == [2, 3]
    assert progress[-1]["running/top1_mean"] == pytest.approx(summary["top1_mean"])

    final: dict = {}
    for r in records:
        if r["type"] == "summary":
            final.update(r["summary"]["update"])
    for key in ("top1_mean", "avgk_mean", "wall_seconds", "E_mean", "n_prompts"):
        assert final[key] == pytest.approx(summary[key])
    # six fixed columns, K = 2 rewards, and the oracle's score (experiment=tiny judges with it)
    assert final["samples.nrows"] == 3 and final["samples.ncols"] == 6 + 2 + 1
    assert {"figures/steps_entropy_error.path", "figures/heatmap_entropy_error.path",
            "figures/reward_curves.path"} <= set(final)
    (offline,) = (out / "wandb").glob("offline-run-*")
    (table,) = (offline / "files" / "media" / "table").glob("samples_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:4] == ["prompt_id", "category", "prompt", "best_response"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [row[0] for row in content["data"]] == [s["prompt_id"] for s in samples]
    assert [row[3:5] for row in content["data"]] == [[s["responses"][s["best_index"]], s["top1"]] for s in samples]
    assert len(list((offline / "files" / "media" / "images").rglob("*.png"))) == 3
    exits = [r["exit"] for r in records if r["type"] == "exit"]
    assert exits and exits[-1].get("exit_code", 0) == 0


def test_failed_job_still_finishes_its_run_as_failed(compose, offline_wandb, monkeypatch):
    def broken(self, records):
        raise RuntimeError("disk full")

    monkeypatch.setattr(RunDirectory, "append_steps", broken)
    out = offline_wandb / "job"
    with pytest.raises(RuntimeError, match="disk full"):
        run_experiment(compose(SMALL + ["guidance=none", "logger=wandb", "logger.mode=offline"]), out)
    exits = [r["exit"] for r in _records(out) if r["type"] == "exit"]
    assert exits and exits[-1]["exit_code"] == 1
    assert not (out / "summary.json").exists()


def _history(offline: Path, key: str) -> list:
    items = [r["history"]["item"] for r in _decode(offline) if r["type"] == "history"]
    return [item[key] for item in items if key in item]


def _stop_at_batch(monkeypatch, n: int) -> None:
    """The job stops (raises) when it is about to commit the `n`-th batch (0-based) of this attempt."""
    calls = []
    append_batch = RunDirectory.append_batch

    def append_or_stop(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > n:
            raise RuntimeError("interrupted")
        return append_batch(self, *args, **kwargs)

    monkeypatch.setattr(RunDirectory, "append_batch", append_or_stop)


@pytest.mark.slow
def test_a_resumed_job_continues_its_own_wandb_run(compose, offline_wandb, monkeypatch):
    """One job, three attempts: W&B disabled (stops after batch 0), offline (stops after batch 1), offline
    (finishes). Both offline runs carry the id derived from the job directory; the first replays the batch
    W&B never saw, the second logs only its own batch and goes on counting; overwrite starts a new run."""
    out = offline_wandb / "job"
    overrides = SMALL + ["guidance=entrgi", "sampler.batch_size=1"]  # 3 batches of 1 prompt, 4 steps each
    for logger in (["logger=none"], ["logger=wandb", "logger.mode=offline"]):
        with monkeypatch.context() as patch:
            _stop_at_batch(patch, 1)
            with pytest.raises(RuntimeError, match="interrupted"):
                run_experiment(compose(overrides + logger), out)
        assert (out / "wandb").exists() == (logger != ["logger=none"])
    summary = run_experiment(compose(overrides + ["logger=wandb", "logger.mode=offline"]), out)

    started = json.loads((out / "run.json").read_text())["attempts"][0]["started"]
    expected = hashlib.sha256(f"{out.resolve()}\n{started!r}".encode()).hexdigest()[:16]
    (first, first_id, _), (second, second_id, _) = local_runs(out)
    assert first_id == second_id == wandb_run_id(out) == expected
    assert _history(first, "prompts_done") == [1, 2]  # batch 0 replayed (W&B was off), then batch 1
    assert _history(first, "denoise/index") == list(range(8))
    assert _history(second, "prompts_done") == [3]  # batches 0 and 1 are in the first offline run already
    assert _history(second, "denoise/index") == [8, 9, 10, 11]
    assert _history(second, "running/top1_mean") == [pytest.approx(summary["top1_mean"])]
    final = {}
    for r in _decode(second):
        if r["type"] == "summary":
            final.update(r["summary"]["update"])
    assert final["samples.nrows"] == 3 and final["n_prompts"] == 3

    run_experiment(compose(overrides + ["logger=wandb", "logger.mode=offline", "run.overwrite=true"]), out)
    ((_, fresh_id, offline),) = local_runs(out)
    assert offline and fresh_id == wandb_run_id(out) != expected
