"""Unmasking schedules (SPEC §2 step 4, §3) on hand-made distributions.

Five masked positions A..E with hand-picked distributions over V = 4 tokens, and two
committed positions X, Y that would be the most confident under every rule. Token 3 plays
EOS. With steps = 2 the grid is [1, 0.5005, 0.001], so step 0 commits
floor(5 · (1 − 0.5005)) = floor(2.4975) = 2 positions.

Hand-computed confidences (negative entropy in nats):

    pos  probs                    token  maskgit  margin   Σ p log p
    A    [.9, .05, .05, 0]        1      .05      .85      -0.394398
    B    [.5, .5, 0, 0]           0      .5       0        -0.693147
    C    [.7, .1, .1, .1]         0      .7       .6       -0.940448
    D    [.4, .3, .3, 0]          2      .3       .1       -1.088900
    E    [.25, .25, .25, .25]     0      .25      0        -1.386294

Top-2: maskgit_plus {C, B}, topk_margin {A, C}, entropy {A, B}: three different answers.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import expected_commit_counts

from entrgi.noise import TrajectoryNoise
from entrgi.schedule import (
    EntropySchedule,
    MaskGitPlusSchedule,
    OriginSchedule,
    ScheduleConfig,
    TopKMarginSchedule,
    UnmaskSchedule,
)

A, B, C, D, E, X, Y = range(7)
EOS = 3
PROBS = torch.tensor(
    [
        [0.9, 0.05, 0.05, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [0.7, 0.1, 0.1, 0.1],
        [0.4, 0.3, 0.3, 0.0],
        [0.25, 0.25, 0.25, 0.25],
        [1.0, 0.0, 0.0, 0.0],  # X: committed, maximally confident
        [1.0, 0.0, 0.0, 0.0],  # Y: committed, maximally confident
    ]
)[None]
TOKENS = torch.tensor([[1, 0, 0, 2, 0, 0, 0]])
MASKED = torch.tensor([[True, True, True, True, True, False, False]])

EXPECTED_CONFIDENCE = {
    MaskGitPlusSchedule: [0.05, 0.5, 0.7, 0.3, 0.25, 1.0, 1.0],
    TopKMarginSchedule: [0.85, 0.0, 0.6, 0.1, 0.0, 1.0, 1.0],
    EntropySchedule: [
        0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05),
        math.log(0.5),
        0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1),
        0.4 * math.log(0.4) + 2 * 0.3 * math.log(0.3),
        math.log(0.25),
        0.0,
        0.0,
    ],
}
EXPECTED_TOP2 = {MaskGitPlusSchedule: {C, B}, TopKMarginSchedule: {A, C}, EntropySchedule: {A, B}}
RANKED_RULES = list(EXPECTED_TOP2)


def _noise(n_rows: int = 1, seed: int = 0) -> TrajectoryNoise:
    return TrajectoryNoise.for_prompts(seed, [f"p{i}" for i in range(n_rows)], 1)


def _chosen(commit: torch.Tensor) -> set[int]:
    return set(commit[0].nonzero().flatten().tolist())


def test_grid_is_linspace_from_one_to_eps():
    """t_i = linspace(1, eps, T+1) in float32, as Dream builds it; step i goes from t_i to t_{i+1}."""
    schedule = EntropySchedule(ScheduleConfig(steps=5, eps=1e-3))
    assert schedule.grid == pytest.approx([1.0, 0.8002, 0.6004, 0.4006, 0.2008, 0.001], abs=1e-7)
    assert schedule.grid == torch.linspace(1.0, 1e-3, 6, dtype=torch.float32).tolist()


@pytest.mark.parametrize("rule", RANKED_RULES, ids=lambda c: c.__name__)
def test_confidence_matches_hand_values(rule):
    """Each rule's confidence is the hand-computed number, not merely the same order."""
    got = rule(ScheduleConfig(steps=2)).confidence(PROBS, TOKENS)[0]
    assert got.tolist() == pytest.approx(EXPECTED_CONFIDENCE[rule], abs=1e-5)


@pytest.mark.parametrize("rule", RANKED_RULES, ids=lambda c: c.__name__)
def test_rule_commits_its_most_confident_positions(rule):
    """Step 0 of 2 commits exactly floor(5·0.4995) = 2 positions: the rule's top two."""
    commit = rule(ScheduleConfig(steps=2)).commit_mask(MASKED, TOKENS, PROBS, 0, _noise(), EOS)
    assert _chosen(commit) == EXPECTED_TOP2[rule]


@pytest.mark.parametrize("rule", [*RANKED_RULES, OriginSchedule], ids=lambda c: c.__name__)
def test_last_step_commits_every_masked_position_and_nothing_else(rule):
    commit = rule(ScheduleConfig(steps=2)).commit_mask(MASKED, TOKENS, PROBS, 1, _noise(), EOS)
    assert commit.tolist() == MASKED.tolist()


@pytest.mark.parametrize("rule", RANKED_RULES, ids=lambda c: c.__name__)
def test_committed_positions_are_never_chosen(rule):
    """X and Y are the most confident positions but already committed: never re-chosen."""
    for step in range(2):
        for alg_temp in (0.0, 1.0):
            commit = rule(ScheduleConfig(steps=2, alg_temp=alg_temp)).commit_mask(MASKED, TOKENS, PROBS, step,
                    _noise(), EOS)
            assert not commit[0, X] and not commit[0, Y]


def test_eos_samples_go_last_when_deprioritised():
    """A is the most certain position under entropy, but its sampled token is EOS."""
    tokens = TOKENS.clone()
    tokens[0, A] = EOS
    on = EntropySchedule(ScheduleConfig(steps=2, deprioritize_eos=True)).commit_mask(MASKED, tokens, PROBS, 0,
            _noise(), EOS)
    off = EntropySchedule(ScheduleConfig(steps=2, deprioritize_eos=False)).commit_mask(MASKED, tokens, PROBS, 0,
            _noise(), EOS)
    assert _chosen(on) == {B, C}  # the next two by entropy
    assert _chosen(off) == {A, B}


def test_eos_positions_still_fill_the_commit_count():
    """Deprioritised EOS positions rank last but are still committed when the count needs them."""
    tokens = torch.tensor([[EOS, EOS, EOS, 0, EOS, 0, 0]])  # only D has a non-EOS sample
    commit = EntropySchedule(ScheduleConfig(steps=2)).commit_mask(MASKED, tokens, PROBS, 0, _noise(), EOS)
    assert commit[0, D]
    assert int(commit.sum()) == 2
    assert not commit[0, X] and not commit[0, Y]


def test_expected_counts_helper_by_hand():
    """The reference helper itself, on numbers worked out by hand (grid 1, .75025, .5005, .25075, .001)."""
    # 16·.24975 = 3.996 -> 3; 13·(1 − .75025⁻¹·.5005) = 13·.33289 = 4.33 -> 4; 9·.49900 = 4.49 -> 4; rest 5
    assert expected_commit_counts(16, 4) == [3, 4, 4, 5]


@pytest.mark.parametrize("alg_temp", [0.0, 0.5])
@pytest.mark.parametrize("rule", RANKED_RULES, ids=lambda c: c.__name__)
def test_commit_counts_follow_the_grid(rule, alg_temp):
    """Over a whole trajectory: floor(n_masked·(1 − s/t)) per step, all remaining on the last step.

    Row 1 starts with 5 positions already committed, so the rows need different counts.
    """
    steps, length, vocab = 8, 24, 6
    gen = torch.Generator().manual_seed(0)
    masked = torch.ones(2, length, dtype=torch.bool)
    masked[1, :5] = False
    expected = [expected_commit_counts(24, steps), expected_commit_counts(19, steps)]
    schedule = rule(ScheduleConfig(steps=steps, alg_temp=alg_temp))
    noise = _noise(2)
    for step in range(steps):
        probs = torch.softmax(3 * torch.randn(2, length, vocab, generator=gen), dim=-1)
        tokens = torch.randint(0, vocab, (2, length), generator=gen)
        commit = schedule.commit_mask(masked, tokens, probs, step, noise, eos_token_id=EOS)
        assert not (commit & ~masked).any(), "a committed position was chosen again"
        assert commit.sum(-1).tolist() == [expected[0][step], expected[1][step]]
        masked = masked & ~commit
    assert not masked.any()


def test_alg_temp_draws_exactly_n_positions_with_randomness():
    """alg_temp > 0 samples positions (Gumbel top-k) but always commits exactly n of them."""
    rows = 400
    masked, tokens, probs = MASKED.expand(rows, -1), TOKENS.expand(rows, -1), PROBS.expand(rows, -1, -1)
    commit = MaskGitPlusSchedule(ScheduleConfig(steps=2, alg_temp=1.0)).commit_mask(masked, tokens, probs, 0,
            _noise(rows), EOS)
    assert (commit.sum(-1) == 2).all()
    assert not commit[:, [X, Y]].any()
    patterns = {tuple(row.tolist()) for row in commit}
    assert len(patterns) > 3, "alg_temp > 0 should vary the chosen positions across trajectories"
    freq = commit.float().mean(0)
    assert freq[C] > freq[A]  # C is far more confident than A under maskgit_plus


def test_tiny_alg_temp_matches_the_deterministic_choice():
    """As alg_temp → 0, sampling positions reduces to the top-n rule."""
    rows = 50
    masked, tokens, probs = MASKED.expand(rows, -1), TOKENS.expand(rows, -1), PROBS.expand(rows, -1, -1)
    commit = MaskGitPlusSchedule(ScheduleConfig(steps=2, alg_temp=1e-4)).commit_mask(masked, tokens, probs, 0,
            _noise(rows), EOS)
    expected = torch.zeros(7, dtype=torch.bool)
    expected[[B, C]] = True
    assert (commit == expected).all()


class TestOrigin:
    """`origin` reveals each masked position independently with probability 1 − s/t."""

    ROWS, LENGTH = 2000, 32  # 64 000 Bernoulli draws: standard error < 0.002

    def _reveal_fraction(self, step: int) -> tuple[float, torch.Tensor]:
        masked = torch.ones(self.ROWS, self.LENGTH, dtype=torch.bool)
        masked[:, ::2] = False  # half the positions are already committed
        tokens = torch.zeros(self.ROWS, self.LENGTH, dtype=torch.long)
        probs = torch.full((self.ROWS, self.LENGTH, 4), 0.25)
        commit = OriginSchedule(ScheduleConfig(steps=4)).commit_mask(masked, tokens, probs, step,
                _noise(self.ROWS), EOS)
        assert not (commit & ~masked).any()
        return commit[masked].float().mean().item(), commit

    @pytest.mark.parametrize("step,p_reveal", [(0, 1 - 0.75025), (2, 1 - 0.25075 / 0.5005)])
    def test_reveal_probability(self, step, p_reveal):
        fraction, commit = self._reveal_fraction(step)
        n = self.ROWS * self.LENGTH // 2
        assert abs(fraction - p_reveal) < 5 * math.sqrt(p_reveal * (1 - p_reveal) / n)
        per_position = commit[:, 1::2].float().mean(0)  # each position on its own, 2000 draws
        assert (per_position - p_reveal).abs().max() < 0.06

    def test_last_step_reveals_everything(self):
        fraction, _ = self._reveal_fraction(3)
        assert fraction == 1.0

    def test_reveal_ignores_the_distributions(self):
        """origin has no confidence: other probabilities give the same reveal pattern."""
        noise = _noise(1)
        schedule = OriginSchedule(ScheduleConfig(steps=4))
        first = schedule.commit_mask(MASKED, TOKENS, PROBS, 0, noise, EOS)
        flipped = schedule.commit_mask(MASKED, TOKENS, PROBS.flip(-1), 0, noise, EOS)
        assert torch.equal(first, flipped)


def test_base_schedule_has_no_confidence():
    with pytest.raises(NotImplementedError):
        UnmaskSchedule(ScheduleConfig(steps=2)).confidence(PROBS, TOKENS)
