"""Commit counts with Dream's timestep arithmetic (SPEC §8): a float32 `torch.linspace(1, eps, T+1)`
grid, then `int(n · (1 − s/t))` in double from those float32 values (the authors' `s.item() / t.item()`).

The restatement (`conftest.expected_commit_counts`) walks the grid step by step in Python; the
schedule plans its counts with its own tensor code. LLaDA keeps its own even split per block.
"""

from __future__ import annotations

import pytest
from conftest import expected_commit_counts

from entrgi.schedule import (
    EntropySchedule,
    LowConfidenceConfig,
    LowConfidenceSchedule,
    MaskGitPlusSchedule,
    ScheduleConfig,
)


def test_the_issue_example_commits_ten_positions_at_step_one():
    """T = 100, L = 1000: a double-precision grid gives 9 here, Dream's float32 grid gives 10."""
    plan = EntropySchedule(ScheduleConfig(steps=100)).planned_counts(1000)
    assert plan[1] == (1000 - plan[0][1], 10)
    assert [c for _, c in plan] == expected_commit_counts(1000, 100)


@pytest.mark.parametrize("eps", [1e-3, 1e-5, 0.05])
def test_planned_counts_match_the_restatement_over_a_grid(eps):
    """Every (T, L) in a grid that reaches the paper's sizes and the lengths where rounding bites."""
    lengths = [1, 7, 16, 128, 255, 823, 900, 1000, 1024]
    for steps in (1, 2, 16, 100, 128, 256):
        for length in lengths:
            plan = MaskGitPlusSchedule(ScheduleConfig(steps=steps, eps=eps)).planned_counts(length)
            assert [c for _, c in plan] == expected_commit_counts(length, steps, eps), (steps, length, eps)
            assert sum(c for _, c in plan) == length


def test_llada_keeps_its_even_split():
    """LLaDA: `mask_num // steps` per step, the remainder to the first steps of each block."""
    plan = LowConfidenceSchedule(LowConfidenceConfig(steps=8, block_length=8)).planned_counts(16)
    assert [c for _, c in plan] == [2, 2, 2, 2, 2, 2, 2, 2]
    plan = LowConfidenceSchedule(LowConfidenceConfig(steps=6, block_length=10)).planned_counts(20)
    assert [c for _, c in plan] == [4, 3, 3, 4, 3, 3]
