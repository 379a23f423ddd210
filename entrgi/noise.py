"""Per-trajectory random numbers that do not depend on batching.

Every random draw of the sampler and of guidance comes from a counter-based generator:
a uniform number is a hash of (trajectory key, stream, step, iteration, position). The
trajectory key is derived from (seed, prompt id, sample index k). So a trajectory sees the
same noise whatever batch it sits in, on however many shards, and no per-trajectory
``torch.Generator`` has to be stepped inside the denoising loop. Draws shared by a prompt's K
trajectories (which particles a resampling step copies) come from the key of its slot k = 0
(`per_prompt`), so they too are keyed by (seed, prompt id) alone.

The hash works on int64 tensors holding 32-bit values, with multipliers below 2**31 so no
product overflows: results are identical on CPU and CUDA.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence

import torch

_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x31848BAB, 0x2C1B3C6D)
# 23 bits: (bits + 0.5) / 2**23 is exact in float32, so a draw is never 0 or 1 (with 24 bits
# the top value rounded up to exactly 1.0).
_UNIFORM_BITS = 23


class Stream(enum.IntEnum):
    """Independent random streams; a new kind of draw gets a new member."""

    COMMIT_TOKEN = 1  # the token committed at a masked position
    REVEAL = 2  # `origin` rule: whether a position is revealed this step
    ORDER = 3  # Gumbel noise for drawing positions with alg_temp > 0
    GUIDANCE_TOKEN = 4  # hard tokens drawn at each guidance iteration
    RESAMPLE = 5  # per prompt: which particles a resampling step copies (`TrajectoryNoise.per_prompt`)


def mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """Avalanche 32-bit values (an int64 tensor or a Python int) into well-spread 32-bit values.

    The same operations run on Python ints, so constant counter parts (stream, step,
    iteration) are folded on the host without creating a device tensor.
    """
    x = x & _MASK32
    for multiplier in _MULTIPLIERS:
        x = x ^ (x >> 16)
        x = (x * multiplier) & _MASK32
    return x ^ (x >> 15)


def _fold(state: torch.Tensor, value: int | torch.Tensor) -> torch.Tensor:
    """Fold one more counter component into a hash state."""
    return mix32(state ^ mix32((value + 0x9E3779B9) & _MASK32))


def prompt_key(prompt_id: str) -> int:
    """A stable 32-bit integer for a prompt id (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(prompt_id.encode(), digest_size=4).digest(), "little")


class TrajectoryNoise:
    """Uniform noise for a batch of trajectories, each with its own counter-based stream."""

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.to(torch.int64)

    @classmethod
    def for_prompts(
        cls, seed: int, prompt_ids: Sequence[str], num_samples: int, device: torch.device | str = "cpu"
    ) -> TrajectoryNoise:
        """Keys for trajectories laid out prompt-major: row b*K + k is sample k of prompt b."""
        pids = torch.tensor([prompt_key(p) for p in prompt_ids], dtype=torch.int64)
        ks = torch.arange(num_samples, dtype=torch.int64)
        state = _fold(torch.full((), seed & _MASK32, dtype=torch.int64), 0x5EED)
        keys = _fold(_fold(state, pids)[:, None], ks[None, :]).reshape(-1)
        return cls(keys.to(device))

    def per_prompt(self, num_samples: int) -> TrajectoryNoise:
        """One stream per prompt (the key of its slot k = 0) for trajectories laid out prompt-major."""
        return TrajectoryNoise(self.keys[::num_samples])

    def uniform(self, stream: Stream, step: int, length: int, iteration: int = 0) -> torch.Tensor:
        """Float32 uniforms in (0, 1) of shape [num_trajectories, length]."""
        state = _fold(_fold(_fold(self.keys, int(stream)), step), iteration)
        positions = torch.arange(length, dtype=torch.int64, device=self.keys.device)
        bits = _fold(state[:, None], positions[None, :]) >> (32 - _UNIFORM_BITS)
        return (bits.to(torch.float32) + 0.5) / float(1 << _UNIFORM_BITS)

    def gumbel(self, stream: Stream, step: int, length: int, iteration: int = 0) -> torch.Tensor:
        """Standard Gumbel noise, for sampling without replacement by perturb-and-top-k."""
        return -torch.log(-torch.log(self.uniform(stream, step, length, iteration)))
