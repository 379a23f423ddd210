"""Catching NaN / ±inf logits in the denoising loop without waiting on the device.

Non-finite logits do not stop sampling by themselves (`entrgi.categorical` reads a row
without a softmax as uniform), so a model gone wrong would silently yield arbitrary tokens.
The loop records, per source of logits, the first step at which they held a NaN or ±inf: a
0-d tensor on the device, updated by one `aminmax` pass over the logits and a few 0-d ops,
never read inside the loop. The sampler reads it once per batch, after the loop, and raises
`NonFiniteLogits`.
"""

from __future__ import annotations

import torch


class NonFiniteLogits(RuntimeError):
    """Logits with a NaN or ±inf reached the sampler; the one-line message names the model, the step and the prompts."""


class FirstNonFinite:
    """The first denoising step at which each source's logits held a NaN or ±inf, kept on the device.

    `sources` name the logits watched (e.g. "dllm", "guided"); `steps` is the loop's length, also
    the value of a source that has been finite so far.
    """

    def __init__(self, sources: tuple[str, ...], steps: int, device: torch.device | str):
        self.steps = steps
        self.first = {source: torch.full((), steps, dtype=torch.long, device=device) for source in sources}

    def observe(self, source: str, step: int, logits: torch.Tensor) -> None:
        """Record `step` for `source` unless all of `logits` [...] is finite or an earlier step was recorded.

        Device ops only: one min/max reduction (NaN propagates through it) and 0-d updates.
        """
        finite = torch.isfinite(torch.stack(torch.aminmax(logits.detach()))).all()
        first = self.first[source]
        self.first[source] = torch.where(finite, first, first.clamp(max=step))

    def read(self) -> dict[str, int]:
        """{source: first step} for the sources whose logits were non-finite, in the order given; one host read."""
        steps = torch.stack(list(self.first.values())).tolist()
        return {source: step for source, step in zip(self.first, steps, strict=True) if step < self.steps}
