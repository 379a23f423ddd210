"""Sweeps (issue 6): local launchers pinning one device per job, resume after SIGKILL, shards, failures.

The multirun tests run `python -m entrgi.run -m` in a subprocess on the toy world (experiment=tiny) with a fake
device count (ENTRGI_DEVICE_COUNT=2) and check, from each job's run.json and a probe's event
log, which device the job saw and which jobs ran together.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import CONF_MODULE
from stalled_job import stop_stalled_job

from entrgi.experiment import run_experiment
from entrgi.reporting.runs import collect_runs, load_run
from entrgi.run_directory import RunDirectory, RunDirectoryBusy, RunDirectoryMismatch
from entrgi.sweeps import job_dir_name, sweep_dir_name

SMALL = ["experiment=tiny", "logger=none", "schedule.steps=4", "sampler.max_new_tokens=6", "benchmark.n_prompts=4"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1", **extra}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("ENTRGI_DEVICE_POOL", None)
    return env


def _entrgi(args: list[str], cwd: Path, timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrgi.run", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def _jobs(sweep: Path) -> dict[str, Path]:
    return {d.name: d for d in sweep.iterdir() if (d / ".hydra").is_dir()}


def _attempt(job: Path) -> dict:
    return json.loads((job / "run.json").read_text())["attempts"][-1]


def test_directory_names_are_a_function_of_the_config():
    """Order-free, seed always named, run-control keys left out, shards named, odd characters hashed."""
    a = job_dir_name(["guidance=aps", "experiment=tiny", "logger=none", "run.overwrite=true"], seed=1)
    assert a == job_dir_name(["experiment=tiny", "seed=1", "guidance=aps", "sampler.batch_size=2"], seed=1)
    assert a == "experiment=tiny,guidance=aps,seed=1"
    assert job_dir_name(["guidance=aps", "benchmark.shard=1", "benchmark.num_shards=4"], 2, 1, 4) == \
        "guidance=aps,seed=2,shard=1of4"
    odd = job_dir_name(["model.path=/data/Dream 7B"], 1)
    assert "/" not in odd and " " not in odd and odd != job_dir_name(["model.path=_data_Dream_7B"], 1)
    sweep = sweep_dir_name(["guidance=none,soft", "experiment=tiny", "logger=none"])
    assert sweep == "experiment=tiny,guidance=none,soft"
    assert len(job_dir_name([f"a.b{i}=x" for i in range(40)], 1)) <= 160


def test_device_pool(monkeypatch):
    """Visible GPUs (fake count, CUDA_VISIBLE_DEVICES), a count, a list, or CPU slots without GPUs."""
    from entrgi.devices import device_pool

    monkeypatch.delenv("ENTRGI_DEVICE_COUNT", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,-1,7")
    assert device_pool() == ["3", "5"]  # CUDA stops at the first invalid id
    assert device_pool(1) == ["3"] and device_pool([0, 2]) == ["0", "2"]
    with pytest.raises(ValueError, match="only 2 GPUs"):
        device_pool(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_pool(cpu_jobs=3) == [None, None, None]
    monkeypatch.setenv("ENTRGI_DEVICE_COUNT", "2")
    assert device_pool() == ["0", "1"]


def test_launcher_configs_compose(monkeypatch):
    from hydra import compose, initialize_config_module

    import entrgi.config  # noqa: F401  (the schemas)

    monkeypatch.setenv("SBATCH_ACCOUNT", "lab")
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        slurm = compose("config", ["hydra/launcher=slurm"], return_hydra_config=True).hydra
        local = compose("config", ["hydra/launcher=local-gpus"], return_hydra_config=True).hydra
    assert slurm.launcher.gres == "gpu:1" and slurm.launcher.account == "lab" and slurm.launcher.partition is None
    assert slurm.launcher.max_num_timeout > 0 and "gpus" not in slurm.callbacks  # SLURM assigns GPUs itself
    assert local.launcher._target_.endswith("JoblibLauncher") and local.callbacks.gpus.devices is None


GATE = """
import json, os, time
from pathlib import Path
from hydra.experimental.callback import Callback

class Gate(Callback):
    \"\"\"Test probe: records each job's process and device, and appends `start <job>` / `end <job>` to one
    event log in the order they happen; holds every job until two have started, so two jobs at a time
    must overlap and one at a time would time out.\"\"\"

    def __init__(self, folder, width=2):
        self.folder, self.width = Path(folder), width

    def _event(self, kind):
        with open(self.folder / "events.log", "a") as log:  # one short O_APPEND write: atomic across processes
            log.write(f"{kind} {self.name}\\n")

    def on_job_start(self, config, **kwargs):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = f"{config.hydra.job.num}"
        self.record = {"pid": os.getpid(), "device": os.environ.get("CUDA_VISIBLE_DEVICES")}
        self._event("start")
        (self.folder / f"start-{self.name}").touch()
        deadline = time.time() + 60
        while len(list(self.folder.glob("start-*"))) < self.width and time.time() < deadline:
            time.sleep(0.02)
        self.record["gate_passed"] = len(list(self.folder.glob("start-*"))) >= self.width

    def on_job_end(self, config, job_return, **kwargs):
        self.record.update(status=job_return.status.name)
        (self.folder / f"job-{self.name}.json").write_text(json.dumps(self.record))
        self._event("end")
"""


def _gated(tmp_path: Path) -> list[str]:
    (tmp_path / "sweep_gate.py").write_text(textwrap.dedent(GATE))
    return ["+hydra.callbacks.gate._target_=sweep_gate.Gate", f"+hydra.callbacks.gate.folder={tmp_path / 'gate'}"]


def _probes(tmp_path: Path) -> dict[str, dict]:
    probes = {p.stem.removeprefix("job-"): json.loads(p.read_text()) for p in (tmp_path / "gate").glob("job-*.json")}
    assert probes and all(p["gate_passed"] for p in probes.values()), probes
    return probes


def _running_together(tmp_path: Path) -> list[set[str]]:
    """From the recorded event order: the set of jobs running after each start event."""
    running: set[str] = set()
    snapshots = []
    for line in (tmp_path / "gate" / "events.log").read_text().splitlines():
        kind, job = line.split()
        if kind == "start":
            running.add(job)
            snapshots.append(set(running))
        else:
            running.remove(job)
    assert not running  # every job that started ended
    return snapshots


@pytest.mark.slow
def test_local_gpus_runs_two_jobs_at_a_time_each_on_its_own_device_and_isolates_a_failure(tmp_path):
    """joblib, 2 fake GPUs: 4 jobs, one of them invalid. Exactly two run at a time; each worker
    process holds one device for its life, so jobs running together have different devices; the
    others finish; the failure is recorded in its directory and in sweep.json; the sweep exits 1."""
    result = _entrgi(["-m", "hydra/launcher=local-gpus", *SMALL[:-1], "guidance=none", "benchmark.n_prompts=4,3,2,0",
                      *_gated(tmp_path)], tmp_path, ENTRGI_DEVICE_COUNT="2", PYTHONPATH=str(tmp_path))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "n_jobs=2" in result.stderr + result.stdout
    probes = _probes(tmp_path)
    together = _running_together(tmp_path)
    assert len(probes) == 4 and max(map(len, together)) == 2
    assert {p["device"] for p in probes.values()} == {"0", "1"}
    by_pid: dict[int, set] = {}
    for p in probes.values():
        by_pid.setdefault(p["pid"], set()).add(p["device"])
    assert len(by_pid) == 2 and all(len(devices) == 1 for devices in by_pid.values())  # pinned per worker
    for jobs in together:  # jobs running at the same time hold different devices
        assert len({probes[job]["device"] for job in jobs}) == len(jobs)

    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = _jobs(sweep)
    failed = next(job for name, job in jobs.items() if "n_prompts=0" in name)
    error = json.loads((failed / "error.json").read_text())
    assert error["type"] == "ConfigError" and "benchmark.n_prompts=0" in error["message"]
    assert sorted(p["status"] for p in probes.values()) == ["COMPLETED"] * 3 + ["FAILED"]
    summary = json.loads((sweep / "sweep.json").read_text())
    assert summary["counts"] == {"finished": 3, "failed": 1}
    assert {j["dir"]: j["status"] for j in summary["jobs"]}[failed.name] == "failed"
    for job in jobs.values():
        if job != failed:
            attempt = json.loads((job / "run.json").read_text())["attempts"][-1]
            assert attempt["cuda_visible_devices"] == attempt["device_slot"] in {"0", "1"}
    (four,) = [path for name, path in jobs.items() if "n_prompts=4" in name]
    assert len(_samples(four)) == 4


@pytest.mark.slow
def test_submitit_local_gives_each_job_its_own_device(tmp_path):
    """submitit's local executor would give both jobs the same CUDA_VISIBLE_DEVICES; here each sees one id."""
    result = _entrgi(["-m", "hydra/launcher=local-gpus-submitit", *SMALL, "guidance=none", "seed=1,2",
                      *_gated(tmp_path)], tmp_path, ENTRGI_DEVICE_COUNT="2", PYTHONPATH=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    probes = _probes(tmp_path)
    assert max(map(len, _running_together(tmp_path))) == 2
    assert sorted(p["device"] for p in probes.values()) == ["0", "1"]
    assert len({p["pid"] for p in probes.values()}) == 2  # a fresh process per job
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = _jobs(sweep)
    assert sorted(_attempt(job)["cuda_visible_devices"] for job in jobs.values()) == ["0", "1"]
    assert json.loads((sweep / "sweep.json").read_text())["counts"] == {"finished": 2}


@pytest.mark.slow
def test_killed_job_rerun_completes_every_prompt_exactly_once(tmp_path, compose):
    """SIGKILL after the first batch is committed and the second half-written, plus a line cut short:
    rerunning the same command writes each prompt once and ends with what an uninterrupted run writes."""
    overrides = [*SMALL, "guidance=aps", "sampler.batch_size=1"]
    returncode, _, run_dir = stop_stalled_job(tmp_path, overrides, _env(), signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    assert run_dir.parent == tmp_path / "outputs" / "runs"
    assert [r["prompt_id"] for r in _samples(run_dir)] == ["tiny-2"] and not (run_dir / "summary.json").exists()
    with open(run_dir / "samples.jsonl", "a") as f:
        f.write('{"prompt_id": "tiny-16", "responses": ["cut sh')  # a line the kill cut short

    result = _entrgi(overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _samples(run_dir)
    assert sorted(r["prompt_id"] for r in records) == ["tiny-16", "tiny-2", "tiny-24", "tiny-26"]

    reference = tmp_path / "reference"
    expected = run_experiment(compose(overrides), reference)
    for got, want in zip(records, _samples(reference), strict=True):
        assert (got["prompt_id"], got["responses"]) == (want["prompt_id"], want["responses"])
        assert got["rewards"] == pytest.approx(want["rewards"], abs=1e-5)
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    want_steps = [json.loads(line) for line in (reference / "steps.jsonl").read_text().splitlines()]
    assert [(s["batch"], s["step"]) for s in steps] == [(s["batch"], s["step"]) for s in want_steps]
    assert [s["E_mean"] for s in steps] == pytest.approx([s["E_mean"] for s in want_steps], abs=1e-5)
    histogram = json.loads((run_dir / "entropy_error_histogram.json").read_text())
    assert histogram["counts"] == json.loads((reference / "entropy_error_histogram.json").read_text())["counts"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_prompts"] == 4 and summary["resumed_prompts"] == 1
    for key in ("top1_mean", "avgk_mean", "E_mean", "entropy_mean"):
        assert summary[key] == pytest.approx(expected[key], abs=1e-5)
    assert [a["resumed_prompts"] for a in json.loads((run_dir / "run.json").read_text())["attempts"]] == [0, 1]


@pytest.mark.parametrize("method,batch", [("none", 4), pytest.param("aps", 1, marks=pytest.mark.slow)])
def test_shards_merge_to_the_unsharded_run(compose, tmp_path, method, batch):
    """Two shards are disjoint, cover the slice, and merge (entrgi.report) to the unsharded run.

    Best-of-N with batch 4: the shards batch the prompts differently, samples must not change.
    APS with batch 1: the per-step statistics and histogram counts must add up exactly too.
    """
    overrides = [*SMALL, f"guidance={method}", f"sampler.batch_size={batch}"]
    whole = tmp_path / "whole"
    run_experiment(compose(overrides), whole)
    for i in range(2):
        run_experiment(compose([*overrides, f"benchmark.shard={i}", "benchmark.num_shards=2"]), tmp_path / f"s{i}")
    ids = [json.loads((tmp_path / f"s{i}" / "run.json").read_text())["prompt_ids"] for i in range(2)]
    assert ids == [["tiny-2", "tiny-24"], ["tiny-16", "tiny-26"]]

    found = collect_runs([tmp_path / "s0", tmp_path / "s1"])
    (merged,), reference = found.runs, load_run(whole)
    assert any("merged 2 shards" in note for note in found.notes)
    assert sorted(merged.prompt_ids) == sorted(reference.prompt_ids)
    for key in ("top1_mean", "avgk_mean", "n_prompts"):
        assert merged.summary[key] == pytest.approx(reference.summary[key], abs=1e-6)
    by_id = {r["prompt_id"]: r for r in reference.samples}
    for r in merged.samples:
        assert r["responses"] == by_id[r["prompt_id"]]["responses"]
        assert r["rewards"] == pytest.approx(by_id[r["prompt_id"]]["rewards"], abs=1e-5)
    if method == "aps":
        assert merged.histogram["counts"] == reference.histogram["counts"]
        assert merged.summary["E_mean"] == pytest.approx(reference.summary["E_mean"], abs=1e-6)
    # the shards and the unsharded run are the same run to the report: found together, one is kept
    assert len(collect_runs([tmp_path]).runs) == 1


def test_shard_settings_are_checked(compose, tmp_path):
    from entrgi.validation import ConfigError

    with pytest.raises(ConfigError, match=r"benchmark.shard=2 .* \[0, 1\]"):
        run_experiment(compose([*SMALL, "benchmark.shard=2", "benchmark.num_shards=2"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="benchmark.num_shards=5 .* only 4 prompts"):
        run_experiment(compose([*SMALL, "benchmark.num_shards=5"]), tmp_path / "b")


def test_resume_refuses_another_config_and_overwrite_starts_afresh(compose, tmp_path, monkeypatch):
    overrides = [*SMALL, "guidance=none", "benchmark.n_prompts=2"]
    out = tmp_path / "job"
    first = run_experiment(compose(overrides), out)
    stamp = (out / "samples.jsonl").stat().st_mtime_ns
    # finished: returned as it is, whatever the run-control keys say
    assert run_experiment(compose([*overrides, "sampler.batch_size=1", "logger=none"]), out) == first
    assert (out / "samples.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(RunDirectoryMismatch, match="sampler.temperature"):
        run_experiment(compose([*overrides, "sampler.temperature=0.3"]), out)
    again = run_experiment(compose([*overrides, "sampler.temperature=0.3", "run.overwrite=true"]), out)
    assert again["n_prompts"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["sampler"]["temperature"] == 0.3
    assert len(json.loads((out / "run.json").read_text())["attempts"]) == 1

    monkeypatch.setattr(RunDirectory, "LOCK_TIMEOUT", 0)
    with RunDirectory(out).lock(), pytest.raises(RunDirectoryBusy):  # one writer per directory
        run_experiment(compose([*overrides, "run.overwrite=true"]), out)
