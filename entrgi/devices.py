"""Devices for local sweeps: N jobs at a time on one machine, each job pinned to its own GPU.

`hydra/launcher=local-gpus` is Hydra's joblib launcher (loky worker processes) with
`n_jobs` = the number of devices; `hydra/launcher=local-gpus-submitit` is submitit's local
executor (a fresh process per job). Both add the `LocalDevices` callback, which does the pinning:

* in the launching process (`on_multirun_start`) it decides the device pool once — the
  `devices` setting, else the visible GPUs (CUDA_VISIBLE_DEVICES, else all), else `cpu_jobs`
  CPU slots — and exports it to the job processes in the environment (ENTRGI_DEVICE_POOL);
* in each job's process (`on_job_start`, before anything touches CUDA) the process claims a
  free slot — an exclusive lock (filelock) on `<lock dir>/slot-<i>.lock`, held until the process
  exits — and sets CUDA_VISIBLE_DEVICES to that slot's device, so the job sees one GPU.

The two traps and how they are handled:

* joblib's loky workers are reused across jobs, and a worker keeps its CUDA context. The slot
  is therefore claimed per *process*, not per job: a worker keeps its GPU for its whole life,
  so its second job runs on the device its context already belongs to. n_jobs = slots, so a
  worker never waits; a respawned worker takes the slot its predecessor released on exit.
* submitit's local executor sets CUDA_VISIBLE_DEVICES itself, to the same list for every job
  (`gpus_per_node` GPUs: 0..n-1) or to "" — it does not give jobs different GPUs, and it
  starts every job at once. The pool is exported before submission (the executor copies the
  environment), the slot claim overrides submitit's value, and a job whose slots are all
  taken waits for one, so N jobs run at a time.

On SLURM none of this is active: the scheduler allocates one GPU per job (`gres`) and sets
CUDA_VISIBLE_DEVICES; `conf/hydra/launcher/slurm.yaml` does not add this callback.
For tests, ENTRGI_DEVICE_COUNT=n fakes n visible GPUs (ids 0..n-1) on a CPU-only machine.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

POOL_ENV = "ENTRGI_DEVICE_POOL"
FAKE_COUNT_ENV = "ENTRGI_DEVICE_COUNT"
SLOT_ENV = "ENTRGI_DEVICE_SLOT"

_claim: dict[str, Any] | None = None  # this process's slot: {"slot", "device", "lock"}


def visible_devices() -> list[str]:
    """GPU ids this process may use: ENTRGI_DEVICE_COUNT (fake), CUDA_VISIBLE_DEVICES, else all GPUs."""
    fake = os.environ.get(FAKE_COUNT_ENV)
    if fake:
        return [str(i) for i in range(int(fake))]
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = []
        for part in listed.split(","):
            part = part.strip()
            if not part or part.startswith("-"):  # CUDA ignores everything from the first invalid id
                break
            ids.append(part)
        return ids
    import torch  # only in the launching process, which never runs a job itself

    return [str(i) for i in range(torch.cuda.device_count())]


def device_pool(devices: int | Sequence[Any] | None = None, cpu_jobs: int = 2) -> list[str | None]:
    """The slots of a local sweep: one per device id, or `cpu_jobs` CPU slots (None) without GPUs.

    `devices`: None (every visible GPU), a count (the first n visible GPUs) or a list of ids.
    """
    if devices is None:
        ids: list[str | None] = list(visible_devices())
        return ids or [None] * max(1, int(cpu_jobs))
    if isinstance(devices, int):
        visible = visible_devices()
        if devices > len(visible):
            raise ValueError(f"hydra.callbacks.gpus.devices={devices}: only {len(visible)} GPUs are visible")
        return list(visible[:devices])
    return [str(d) for d in devices]


def device_slots(devices: Any = None, cpu_jobs: int = 2) -> int:
    """Resolver for the launcher's `n_jobs`: how many jobs run at a time."""
    pool = os.environ.get(POOL_ENV)
    if pool:  # inside a job process: never probe CUDA there
        return len(json.loads(pool)["devices"])
    if devices is not None and not isinstance(devices, int):
        devices = list(devices)
    return len(device_pool(devices, cpu_jobs))


def export_pool(devices: list[str | None], lock_dir: str | Path) -> None:
    lock_dir = Path(lock_dir).resolve()
    lock_dir.mkdir(parents=True, exist_ok=True)
    os.environ[POOL_ENV] = json.dumps({"devices": devices, "locks": str(lock_dir)})


def pin_device(poll_seconds: float = 0.5) -> dict[str, Any] | None:
    """Claim a device slot for this process (once) and make its device the only visible one.

    No-op (None) outside a local-gpus sweep. Blocks while every slot is held by another process.
    """
    global _claim
    spec = os.environ.get(POOL_ENV)
    if not spec:
        return None
    if _claim is None:
        from filelock import FileLock, Timeout

        pool = json.loads(spec)
        lock_dir = Path(pool["locks"])
        lock_dir.mkdir(parents=True, exist_ok=True)
        waiting = False
        while _claim is None:
            for slot, device in enumerate(pool["devices"]):
                lock = FileLock(str(lock_dir / f"slot-{slot}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                (lock_dir / f"slot-{slot}.owner").write_text(
                    f"pid {os.getpid()} on {socket.gethostname()}, device {device}\n")
                _claim = {"slot": slot, "device": device, "lock": lock}  # held while we live: the OS frees it at exit
                break
            else:
                if not waiting:
                    log.info("all %d device slots are taken; waiting for one", len(pool["devices"]))
                    waiting = True
                time.sleep(poll_seconds)
    device = _claim["device"]
    if device is not None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != device:
            raise RuntimeError(
                f"CUDA was initialised in this process (pid {os.getpid()}) before it was pinned to device "
                f"{device}; nothing may touch CUDA before the job starts"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.environ[SLOT_ENV] = str(_claim["slot"])
    return {"slot": _claim["slot"], "device": device}


class LocalDevices(Callback):
    """Hydra callback that pins the jobs of a local sweep to one device each (see the module docstring)."""

    def __init__(self, devices: Any = None, cpu_jobs: int = 2, lock_dir: str | None = None):
        self.devices = devices
        self.cpu_jobs = cpu_jobs
        self.lock_dir = lock_dir

    def on_multirun_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        devices = self.devices
        if OmegaConf.is_config(devices):
            devices = OmegaConf.to_container(devices)
        pool = device_pool(devices, self.cpu_jobs)
        export_pool(pool, self.lock_dir or Path(str(config.hydra.sweep.dir)) / ".devices")
        if pool[0] is None and "OMP_NUM_THREADS" not in os.environ:
            # CPU jobs side by side: split the cores (joblib does this for its workers; submitit does not),
            # or the jobs' thread pools oversubscribe the cores and each runs many times slower.
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(pool)))
        where = "CPU" if pool[0] is None else "GPU " + ", ".join(map(str, pool))
        log.info("local sweep: %d jobs at a time, one per slot (%s)", len(pool), where)

    def on_job_start(self, config, **kwargs) -> None:
        pin_device()
