"""The masked-diffusion sampler: B prompts x K samples denoised together (SPEC §2, §3).

Each step: one dLLM forward without gradient, the guidance hook on the response logits,
a token drawn at every masked position from softmax(top_p(logits / τ)), and the schedule
committing some of them; then, for a particle method, the rows of each prompt's group
reordered as the method asks (`Guidance.resample`). All randomness comes from counter-based
per-trajectory streams, so a prompt's samples do not depend on the batch it is in. Nothing in
the loop reads a value back to the host: whether the dLLM's or the guided logits held a NaN or
±inf is kept on the device and read once the batch is done (`entrgi.nonfinite`), and each dLLM
forward is counted from the rows and columns it ran over (`entrgi.compute`: fewer columns inside a
block with `model.cache`, `entrgi.models.block_cache`; the guidance counts its own RM work).
With `schedule.confidence_threshold` (off by default) the counts adapt and the loop ends once no
position is masked: one host read per step, after the commit (`entrgi.host_flag`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entrgi.categorical import draw_logits, sample_filtered
from entrgi.compute import ComputeLedger
from entrgi.guidance import Committed, Guidance, GuidanceContext
from entrgi.guidance.base import true_columns
from entrgi.host_flag import HostFlag
from entrgi.models import BlockCache, DiffusionLM, check_cache
from entrgi.noise import Stream, TrajectoryNoise
from entrgi.nonfinite import FirstNonFinite, NonFiniteLogits
from entrgi.resampling import ancestor_rows
from entrgi.schedule import UnmaskSchedule
from entrgi.validation import ranged


@dataclass
class SamplerConfig:
    """The `sampler` section of the run config."""

    num_samples: int = ranged(4, low=1)
    max_new_tokens: int = ranged(128, low=1)
    # 0: greedy (the argmax, confidences from the untempered distribution), as Dream's and LLaDA's generate.
    temperature: float = ranged(0.7, low=0.0)
    top_p: float = ranged(0.95, low=0.0, high=1.0, low_open=True)
    top_k: int | None = ranged(None, low=1, optional=True)  # Dream's top_k; None: no top-k filter
    batch_size: int = ranged(1, low=1)


@dataclass
class Generation:
    """Response tokens [B*K, L] (prompt-major: row b*K + k), per-step statistics, and the batch's dLLM
    and guidance RM work (`entrgi.compute`)."""

    responses: torch.Tensor
    steps: list[dict[str, float]]
    compute: ComputeLedger


@dataclass
class Denoised:
    """What the denoising loop leaves on the device: per-step statistics (0-d tensors) and the first
    step at which the dLLM's ("dllm") or the guided ("guided") logits held a NaN or ±inf; and on the
    host, its dLLM forwards."""

    steps: list[dict[str, torch.Tensor]]
    nonfinite: FirstNonFinite
    compute: ComputeLedger


class DiffusionSampler:
    """Denoise a fully masked response region for every (prompt, sample) trajectory.

    Built from the `sampler` section of a run config (`batch_size` is the runner's business) and
    the model, schedule and guidance it runs.
    """

    def __init__(self, config: SamplerConfig, *, model: DiffusionLM, schedule: UnmaskSchedule, guidance: Guidance):
        self.config = config
        self.model = model
        self.schedule = schedule
        self.guidance = guidance
        self.num_samples, self.max_new_tokens = config.num_samples, config.max_new_tokens
        schedule.check_length(config.max_new_tokens)
        check_cache(model.config.cache, schedule, config.max_new_tokens)
        # Computed once on the host: reading counts inside the loop would wait on the device.
        self.plan = schedule.planned_counts(config.max_new_tokens) or [None] * schedule.steps
        self.bounds = schedule.masked_bounds(config.max_new_tokens) or [None] * schedule.steps

    def build_canvas(self, prompt_token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts, each repeated K times, followed by L masks; and the key mask."""
        width = max(len(ids) for ids in prompt_token_ids)
        rows, keep = [], []
        for ids in prompt_token_ids:
            pad = width - len(ids)
            rows.append([self.model.pad_token_id] * pad + ids + [self.model.mask_token_id] * self.max_new_tokens)
            keep.append([False] * pad + [True] * (len(ids) + self.max_new_tokens))
        canvas = torch.tensor(rows, device=self.model.device).repeat_interleave(self.num_samples, dim=0)
        attention = torch.tensor(keep, device=self.model.device).repeat_interleave(self.num_samples, dim=0)
        return canvas, attention

    def generate(self, prompts: list[str], prompt_ids: list[str], seed: int) -> Generation:
        """Sample K responses for each prompt; `prompt_ids` key the random streams.

        Raises NonFiniteLogits, after the loop, if the dLLM's or the guided logits held a NaN or ±inf.
        """
        canvas, attention = self.build_canvas([self.model.encode_prompt(p) for p in prompts])
        noise = TrajectoryNoise.for_prompts(seed, prompt_ids, self.num_samples, device=canvas.device)
        self.guidance.begin_batch(prompts, self.num_samples, self.max_new_tokens)
        denoised = self.denoise(canvas, attention, noise)
        self._check_finite(denoised.nonfinite, prompt_ids)
        responses = canvas[:, canvas.shape[1] - self.max_new_tokens :].cpu()
        return Generation(responses=responses, steps=_steps_to_host(denoised.steps, self.schedule),
                          compute=denoised.compute + self.guidance.compute())

    def _check_finite(self, nonfinite: FirstNonFinite, prompt_ids: list[str]) -> None:
        """Raise NonFiniteLogits naming the source that went wrong first (the dLLM on a tie: guidance starts
        from its logits)."""
        first = nonfinite.read()
        if not first:
            return
        source = min(first, key=first.get)
        producer = (f"the dLLM (model.path={self.model.config.path})" if source == "dllm"
                    else f"guidance ({self.guidance.describe()})")
        raise NonFiniteLogits(
            f"{'' if source == 'dllm' else 'guided '}logits with NaN or inf from {producer} at denoising step "
            f"{first[source]} of {self.schedule.steps}, batch of prompts {', '.join(prompt_ids)}"
        )

    def denoise(
        self, canvas: torch.Tensor, attention: torch.Tensor, noise: TrajectoryNoise
    ) -> Denoised:
        """Run the denoising steps on `canvas` in place; statistics and the non-finite check stay on the device.

        Nothing in here reads a device value on the host (tests run it with host reads forbidden), but
        for the flags of the options that skip work (`entrgi.host_flag`): with `schedule.confidence_threshold`,
        whether any position is still masked after each step, which ends the loop early.
        """
        start = canvas.shape[1] - self.max_new_tokens
        length = self.max_new_tokens
        stop_ids = torch.tensor(self.model.stop_token_ids, device=canvas.device)  # all rank last (deprioritize_eos)
        per_step = []
        nonfinite = FirstNonFinite(("dllm", "guided"), self.schedule.steps, canvas.device)
        compute = ComputeLedger()
        adaptive = self.schedule.config.confidence_threshold is not None
        masked_left = HostFlag(canvas.device) if adaptive else None
        cache = BlockCache(self.model, self.model.config.cache)
        for step in range(self.schedule.steps):
            response = canvas[:, start:]
            masked = response == self.model.mask_token_id
            logits, width = cache.logits_and_width(canvas, attention, start, self.schedule.block_span(length, step))
            compute.dllm_forward(canvas.shape[0], width)
            context = GuidanceContext(step, response, masked, noise, self.plan[step],
                                      true_columns(masked, self.bounds[step]))
            nonfinite.observe("dllm", step, logits)
            steered = self.guidance.steer(logits, context)
            if steered.logits is not logits:  # unguided steps return the dLLM's logits, checked already
                nonfinite.observe("guided", step, steered.logits)
            positions = context.positions
            rows = positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
            temperature, top_p, top_k = self.config.temperature, self.config.top_p, self.config.top_k
            scaled = draw_logits(steered.logits.gather(1, rows), temperature, self.model.mask_token_id)
            uniforms = None if temperature == 0 else noise.uniform(Stream.COMMIT_TOKEN, step, length)
            drawn, drawn_probs = sample_filtered(
                scaled, None if uniforms is None else uniforms.gather(1, positions), top_p, top_k,
                distribution=self.schedule.config.order_from == "drawn",
            )
            tokens = response.scatter(1, positions, drawn)
            commit = self.schedule.commit_mask(
                masked, tokens, self._order_probs(logits, steered.logits, drawn_probs, rows), step, noise,
                stop_ids, positions,
            )
            canvas[:, start:] = torch.where(commit, tokens, response)
            stats = {"masked": masked.sum(-1).float().mean(), **steered.stats}
            if adaptive:
                masked_left.post((canvas[:, start:] == self.model.mask_token_id).any())
            finished = step + 1 == self.schedule.steps or (adaptive and not masked_left.read())
            if not finished:  # resampling the finished responses would only duplicate some
                committed = Committed(
                    step, canvas[:, start:], self.model.mask_token_id, steered.logits, tokens, noise, self.num_samples,
                    unguided=logits, commit=commit, planned=self.plan[step], temperature=temperature, top_p=top_p,
                    top_k=top_k,
                )
                stats |= self._resample(canvas, committed, cache)
            per_step.append(stats)
            if finished:
                break
        return Denoised(steps=per_step, nonfinite=nonfinite, compute=compute)

    def _resample(self, canvas: torch.Tensor, committed: Committed, cache: BlockCache) -> dict[str, torch.Tensor]:
        """Reorder each prompt's rows (and the dLLM's cache) as the guidance asks, with one gather; its statistics
        ({} without)."""
        resampling = self.guidance.resample(committed)
        if resampling is None:
            return {}
        rows = ancestor_rows(resampling.ancestors, self.num_samples)
        canvas.copy_(canvas.index_select(0, rows))  # prompt and padding are equal within a group: only responses move
        self.guidance.reorder(rows)
        cache.reorder(rows)
        return resampling.stats

    def _order_probs(self, unguided, guided, drawn_probs, rows) -> torch.Tensor:
        """The distribution [N, F, V] the schedule ranks positions by (`schedule.order_from`)."""
        order_from, order_temperature = self.schedule.config.order_from, self.schedule.config.order_temperature
        if order_from == "drawn" and order_temperature == "sampling":
            return drawn_probs
        if order_from == "drawn":  # untempered, but filtered as the draw was
            untempered = torch.softmax(guided.gather(1, rows), dim=-1)
            return untempered * (drawn_probs > 0) / (untempered * (drawn_probs > 0)).sum(-1, keepdim=True)
        source = unguided if order_from == "unguided" else guided
        temperature = self.schedule.confidence_temperature(self.config.temperature)
        return torch.softmax(source.gather(1, rows) / temperature, dim=-1)


def _steps_to_host(per_step: list[dict[str, torch.Tensor]], schedule: UnmaskSchedule) -> list[dict[str, float]]:
    """One device-to-host copy per statistic after the loop, instead of one per step.

    Steps may carry different statistics (e.g. only every k-th step is guided).
    """
    rows = [{"step": i, "t": schedule.grid[i], "s": schedule.grid[i + 1]} for i in range(len(per_step))]
    for key in dict.fromkeys(k for stats in per_step for k in stats):
        where = [i for i, stats in enumerate(per_step) if key in stats]
        values = torch.stack([per_step[i][key] for i in where]).float().cpu().tolist()
        for i, value in zip(where, values, strict=True):
            rows[i][key] = value
    return rows
