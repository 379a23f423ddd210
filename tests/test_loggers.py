"""`logger=wandb`: an offline W&B run written by a tiny job holds the per-step curves, the summary,
the samples table and the figures, and is closed even when the job fails (issue 5). W&B never loses
or stalls a job (issue 15): the mode is decided before the models load, an unreachable server
means an offline run, SIGTERM closes the run as failed and leaves the job to resume. Never online:
"online" here is a server at a closed local port."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stalled_job import stop_stalled_job

from entrgi.components import build
from entrgi.experiment import run_experiment
from entrgi.loggers import (
    NullLogger,
    WandbLogger,
    WandbLoggerConfig,
    api_key_available,
    local_runs,
    sample_table_row,
    step_metrics,
    wandb_mode,
    wandb_run_id,
)
from entrgi.run import TERMINATED_EXIT_CODE, Terminated, sigterm_raises
from entrgi.run_directory import RunDirectory
from entrgi.validation import ConfigError

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


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No W&B API key anywhere: no WANDB_API_KEY, no identity token, an empty home (no ~/.netrc)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("NETRC", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    return home


FAKE_KEY = "f" * 40  # well-formed, known to no server


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "entrgi.loggers" and r.levelno >= logging.WARNING]


def _exit_codes(offline: Path) -> list[int]:
    return [r["exit"].get("exit_code", 0) for r in _decode(offline) if r["type"] == "exit"]


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


def test_the_mode_is_decided_from_the_config_the_environment_and_the_credentials(no_credentials, monkeypatch,
                                                                                 caplog):
    config = WandbLoggerConfig()  # mode=auto
    assert not api_key_available() and wandb_mode(config) == "offline"
    monkeypatch.setenv("WANDB_MODE", "")  # empty: unset, not an error
    assert wandb_mode(config) == "offline"
    (no_credentials / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    (no_credentials / ".netrc").chmod(0o600)
    assert api_key_available() and wandb_mode(config) == "online"  # `wandb login` wrote this file
    (no_credentials / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert wandb_mode(config) == "online"
    for env, mode in (("disabled", "disabled"), ("offline", "offline"), ("dryrun", "offline")):
        monkeypatch.setenv("WANDB_MODE", env)
        assert wandb_mode(config) == mode
    assert wandb_mode(WandbLoggerConfig(mode="online")) == "online"  # logger.mode wins over WANDB_MODE
    assert not _warnings(caplog)


def test_online_without_a_key_runs_offline_with_one_warning(no_credentials, caplog):
    with caplog.at_level(logging.WARNING, logger="entrgi.loggers"):
        assert WandbLogger(WandbLoggerConfig(mode="online")).mode == "offline"
    (line,) = _warnings(caplog)
    assert "no API key" in line and "offline" in line


def test_a_misspelt_wandb_mode_is_refused_before_the_models_load(compose, no_credentials, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "onlin")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE='onlin' is not allowed: expected one of online, offline, "
                                          r"disabled, .*or leave it unset$"):
        wandb_mode(WandbLoggerConfig(mode="offline"))  # W&B would refuse it whatever logger.mode says
    out = tmp_path / "job"
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        run_experiment(compose(SMALL + ["guidance=none", "logger=wandb"]), out)
    assert not (out / "run.json").exists() and not (out / "wandb").exists()  # nothing loaded or written


def test_an_unreachable_server_means_an_offline_run_of_the_same_id(compose, offline_wandb, monkeypatch, caplog):
    """Online with a key, but nothing answers at the server's address: after logger.init_timeout one
    warning, and the job completes with an offline run carrying the job's W&B id."""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: connection refused
    out = offline_wandb / "job"
    cfg = compose(SMALL + ["guidance=none", "logger=wandb", "logger.mode=online", "logger.init_timeout=1"])
    with caplog.at_level(logging.WARNING, logger="entrgi.loggers"):
        summary = run_experiment(cfg, out)
    assert summary["n_prompts"] == 3 and (out / "summary.json").is_file()
    (line,) = _warnings(caplog)
    assert "logger.init_timeout=1s" in line and "offline" in line
    offline = [(path, run_id) for path, run_id, is_offline in local_runs(out) if is_offline]
    assert [run_id for _, run_id in offline] == [wandb_run_id(out)]
    assert _exit_codes(offline[0][0]) == [0]


def test_an_empty_wandb_mode_counts_as_unset(compose, offline_wandb, no_credentials, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "")  # W&B itself refuses "" at wandb.init
    out = offline_wandb / "job"
    with caplog.at_level(logging.WARNING, logger="entrgi.loggers"):
        run_experiment(compose(SMALL + ["guidance=none", "logger=wandb"]), out)  # auto, no key: offline
    ((_, run_id, offline),) = local_runs(out)
    assert offline and run_id == wandb_run_id(out) and not _warnings(caplog)


def test_sigterm_raises_terminated_past_except_exception():
    before = signal.getsignal(signal.SIGTERM)
    assert before is signal.SIG_DFL  # else sigterm_raises leaves SIGTERM alone (below)
    caught = []
    with pytest.raises(Terminated), sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # never send the default SIGTERM to pytest
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # interrupted by the handler
        except Exception as error:
            caught.append(error)
    assert not caught and signal.getsignal(signal.SIGTERM) is before
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a launcher's own handling (submitit) is left in place
    try:
        with sigterm_raises():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.slow
def test_sigterm_closes_the_wandb_run_as_failed_and_the_rerun_resumes(offline_wandb):
    """SIGTERM in the middle of a job (SLURM's time-out or preemption): exit code 143 and one line, the
    offline W&B run closed as failed, no summary nor error.json; the same command then finishes the job."""
    args = SMALL + ["guidance=none", "sampler.batch_size=1", "logger=wandb", "logger.mode=offline"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    returncode, stderr, run_dir = stop_stalled_job(offline_wandb, args, env, signal.SIGTERM)
    assert returncode == TERMINATED_EXIT_CODE == 143, stderr[-2000:]
    assert [line for line in stderr.splitlines() if line.startswith("entrgi:")] == [
        f"entrgi: terminated (SIGTERM); {run_dir} is kept: rerun the same command to resume"]
    assert "Traceback" not in stderr
    assert not (run_dir / "summary.json").exists() and not (run_dir / "error.json").exists()
    ((first, run_id, _),) = local_runs(run_dir)
    assert _exit_codes(first) == [1]  # closed, as failed

    rerun = subprocess.run([sys.executable, "-m", "entrgi.run", *args], cwd=offline_wandb, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_prompts"] == 3 and summary["resumed_prompts"] == 1
    (_, first_id, _), (second, second_id, _) = local_runs(run_dir)
    assert first_id == second_id == run_id and _exit_codes(second) == [0]


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
