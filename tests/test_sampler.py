"""Sampler invariants on the tiny dLLM (SPEC §2 steps 1 and 4, §7), for every unmasking rule."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import expected_commit_counts

from entrgi.guidance import Guidance, GuidanceContext, NoGuidance, Steered
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, MaskGitPlusSchedule, OriginSchedule, ScheduleConfig, TopKMarginSchedule

RULES = {
    "entropy": EntropySchedule,
    "maskgit_plus": MaskGitPlusSchedule,
    "topk_margin": TopKMarginSchedule,
    "origin": OriginSchedule,
}
DETERMINISTIC = ("entropy", "maskgit_plus", "topk_margin")
STEPS, LENGTH, K = 8, 8, 2
# Prompts of different lengths, so the batch has different amounts of left padding.
PROMPTS = ["Hi", "Tell me a short story about a quiet garden, please.", "Why is the robot happy?", "A ship?"]
IDS = ["p-hi", "p-story", "p-robot", "p-ship"]


def _sampler(model, rule: str, guidance=None, temperature: float = 0.7, **schedule_kw) -> DiffusionSampler:
    return DiffusionSampler(
        SamplerConfig(num_samples=K, max_new_tokens=LENGTH, temperature=temperature, top_p=0.95),
        model=model, schedule=RULES[rule](ScheduleConfig(steps=STEPS,
                **schedule_kw)), guidance=guidance or NoGuidance(),
    )


class LogitsSpy:
    """Stands in for model.logits: records the canvas of every step, optionally edits the logits."""

    def __init__(self, model, monkeypatch, edit=None):
        self.inner = model.logits
        self.edit = edit
        self.canvases: list[torch.Tensor] = []
        self.attention = None
        self.start = None
        monkeypatch.setattr(model, "logits", self)

    def __call__(self, canvas, attention, start):
        self.canvases.append(canvas.clone())
        self.attention, self.start = attention.clone(), start
        logits = self.inner(canvas, attention, start)
        return self.edit(logits) if self.edit else logits


def test_build_canvas_left_pads_and_repeats_each_prompt_k_times(random_model):
    """Rows b*K + k: pads, prompt, L masks; the key mask hides exactly the pads."""
    sampler = DiffusionSampler(
        SamplerConfig(num_samples=2, max_new_tokens=3), model=random_model,
        schedule=EntropySchedule(ScheduleConfig(steps=2)), guidance=NoGuidance(),
    )
    canvas, attention = sampler.build_canvas([[5, 6, 7], [8]])
    pad, mask = random_model.pad_token_id, random_model.mask_token_id
    long_row, short_row = [5, 6, 7, mask, mask, mask], [pad, pad, 8, mask, mask, mask]
    assert canvas.tolist() == [long_row, long_row, short_row, short_row]
    assert attention.tolist() == [[True] * 6] * 2 + [[False, False] + [True] * 4] * 2


@pytest.mark.parametrize("rule", list(RULES))
def test_denoising_invariants(random_model, monkeypatch, rule):
    """Prompts never change, committed tokens never change, masks never grow, none are left,
    and (for the confidence rules) each step commits floor(n·(1 − s/t)), the rest at the end."""
    spy = LogitsSpy(random_model, monkeypatch)
    generation = _sampler(random_model, rule).generate(PROMPTS, IDS, seed=3)

    assert len(spy.canvases) == STEPS
    start, mask = spy.start, random_model.mask_token_id
    first = spy.canvases[0]
    assert first.shape == (len(PROMPTS) * K, start + LENGTH)
    assert (first[:, start:] == mask).all(), "the response region starts fully masked"
    responses = [c[:, start:] for c in spy.canvases] + [generation.responses]
    for canvas in spy.canvases[1:]:
        assert torch.equal(canvas[:, :start], first[:, :start]), "a prompt or pad token changed"
    for before, after in itertools.pairwise(responses):
        committed = before != mask
        assert torch.equal(after[committed], before[committed]), "a committed token changed"

    masks = torch.stack([(r == mask).sum(-1) for r in responses])  # [STEPS + 1, N]
    assert (masks[1:] <= masks[:-1]).all(), "the number of masks grew"
    assert (masks[-1] == 0).all(), "masks left at the end"
    assert generation.responses.shape == (len(PROMPTS) * K, LENGTH)
    assert [row["masked"] for row in generation.steps] == pytest.approx(masks[:-1].float().mean(-1).tolist())
    if rule in DETERMINISTIC:
        commits = (masks[:-1] - masks[1:]).T  # [N, STEPS]
        assert all(row == expected_commit_counts(LENGTH, STEPS) for row in commits.tolist())


def test_expected_counts_by_hand():
    """The count helper on hand numbers: grid 1, .875125, .75025, .625375, .5005, ..."""
    # 8·.124875 → 0; 8·(1 − .75025/.875125 = .14269) = 1.14 → 1; 7·.16644 = 1.17 → 1; ...
    assert expected_commit_counts(8, STEPS)[:3] == [0, 1, 1]
    assert sum(expected_commit_counts(8, STEPS)) == 8


@pytest.mark.parametrize("rule", list(RULES))
def test_same_seed_same_samples_other_seed_other_samples(random_model, rule):
    sampler = _sampler(random_model, rule)
    a = sampler.generate(PROMPTS[:2], IDS[:2], seed=11).responses
    b = sampler.generate(PROMPTS[:2], IDS[:2], seed=11).responses
    c = sampler.generate(PROMPTS[:2], IDS[:2], seed=12).responses
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1]), "the K samples of a prompt share their randomness"


@pytest.mark.parametrize("rule", list(RULES))
def test_batch_size_does_not_change_a_prompts_samples(random_model, rule):
    """Each prompt alone (batch 1) and in a batch of 4 (with left padding) gets identical samples.

    Padding changes the logits by float rounding (~1e-7), so this holds as long as no two
    confidences are that close; the tiny dLLM is initialised peaked enough for that.
    """
    sampler = _sampler(random_model, rule)
    batched = sampler.generate(PROMPTS, IDS, seed=5).responses
    for b, (prompt, pid) in enumerate(zip(PROMPTS, IDS, strict=True)):
        alone = sampler.generate([prompt], [pid], seed=5).responses
        assert torch.equal(alone, batched[b * K : (b + 1) * K]), f"prompt {pid} differs with batch size"
    reordered = sampler.generate(PROMPTS[::-1], IDS[::-1], seed=5).responses
    assert torch.equal(reordered[:K], batched[-K:])


def test_the_mask_token_is_never_committed(random_model, monkeypatch):
    """Even when the model puts most of its mass on <|mask|>, the committed token is a real one."""
    mask = random_model.mask_token_id

    def favour_mask(logits):
        logits = logits.clone()
        logits[..., mask] += 20.0
        return logits

    LogitsSpy(random_model, monkeypatch, edit=favour_mask)
    generation = _sampler(random_model, "maskgit_plus").generate(PROMPTS[:2], IDS[:2], seed=0)
    assert not (generation.responses == mask).any()


class _Bonus(Guidance):
    """Adds a large bonus to one token and reports a statistic; records its calls."""

    def __init__(self, token: int):
        self.token, self.batches, self.contexts = token, [], []

    def begin_batch(self, prompts, num_samples, *rest):
        self.batches.append((list(prompts), num_samples))

    def steer(self, logits, context: GuidanceContext) -> Steered:
        self.contexts.append(context)
        steered = logits.clone()
        steered[..., self.token] += 100.0
        return Steered(logits=steered, stats={"bonus": torch.tensor(float(context.step))})


def test_tokens_come_from_the_guidance_hook(random_model):
    """The loop calls the hook once per step, samples from its logits and records its stats."""
    token = random_model.tokenizer.convert_tokens_to_ids("<|im_start|>")
    guidance = _Bonus(token)
    generation = _sampler(random_model, "entropy", guidance=guidance).generate(PROMPTS[:2], IDS[:2], seed=0)
    assert (generation.responses == token).all()
    assert guidance.batches == [(PROMPTS[:2], K)]
    assert [c.step for c in guidance.contexts] == list(range(STEPS))
    first = guidance.contexts[0]
    assert first.masked.all() and first.response.shape == (2 * K, LENGTH)
    assert [row["bonus"] for row in generation.steps] == list(range(STEPS))
    grid = torch.linspace(1.0, 1e-3, STEPS + 1, dtype=torch.float64).tolist()
    assert [row["t"] for row in generation.steps] == pytest.approx(grid[:-1])
    assert [row["s"] for row in generation.steps] == pytest.approx(grid[1:])
