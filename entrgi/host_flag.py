"""A boolean decided on the device and read on the host: the one host read of the options that skip work.

The denoising loop reads nothing back by default (`tests/test_host_sync.py`). Two options, off by
default, must tell the host something only the device knows, because skipping work is a host
decision: the entropy gate (`guidance.entropy_gate`: is any trajectory still guided?) and
confidence-threshold decoding (`schedule.confidence_threshold`: is any position still masked?).
Each reads one flag per step through this class, and the host-sync tests allow host reads from
this file only, counting them.

`post` starts the copy into host memory without waiting (pinned memory and an event on CUDA);
`read` waits for that copy only, so a flag posted well before it is read, as the gate does a
step ahead, costs the host no wait on the device.
"""

from __future__ import annotations

import torch


class HostFlag:
    """One boolean, posted from a 0-d device tensor and read as a Python bool; `initial` until posted."""

    def __init__(self, device: torch.device, initial: bool = True):
        self._cuda = torch.device(device).type == "cuda"
        self._host = torch.full((), initial, dtype=torch.bool, pin_memory=self._cuda)
        self._copied: torch.cuda.Event | None = None

    def post(self, value: torch.Tensor) -> None:
        """Copy the 0-d bool tensor `value` to the host, without waiting on a CUDA device."""
        self._host.copy_(value, non_blocking=self._cuda)
        if self._cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()

    def read(self) -> bool:
        """The last posted value: waits for its copy (and the work it depends on) to finish, nothing more."""
        if self._copied is not None:
            self._copied.synchronize()
        return bool(self._host)
