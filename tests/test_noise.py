"""Counter-based per-trajectory noise (SPEC §7): in (0, 1), uniform, independent, batch-invariant."""

from __future__ import annotations

import math

import torch

from entrgi.noise import Stream, TrajectoryNoise, prompt_key


def test_uniforms_are_strictly_inside_the_unit_interval():
    noise = TrajectoryNoise.for_prompts(3, [f"p{i}" for i in range(8)], 4)
    u = noise.uniform(Stream.COMMIT_TOKEN, 0, 4096)
    assert u.dtype == torch.float32 and u.shape == (32, 4096)
    assert u.min() > 0 and u.max() < 1


def test_top_bucket_does_not_round_up_to_one():
    """The hash value of this draw has all top bits set; it must stay < 1 in float32.

    (Found by search: with 24 mantissa bits, (2**24 − 1 + 0.5) rounded to 2**24 and the
    draw was exactly 1.0, which turns a Gumbel draw into +inf.)
    """
    noise = TrajectoryNoise.for_prompts(1, ["tiny-0"], 1)
    u = noise.uniform(Stream.COMMIT_TOKEN, 2, 6833881)[0, -1]
    assert 0.999999 < u.item() < 1.0
    g = noise.gumbel(Stream.COMMIT_TOKEN, 2, 6833881)[0, -1]
    assert torch.isfinite(g)


def test_uniforms_are_uniform():
    """Mean 1/2, variance 1/12, and every tenth of (0, 1) gets a tenth of 200 000 draws."""
    noise = TrajectoryNoise.for_prompts(0, [f"p{i}" for i in range(50)], 4)
    u = noise.uniform(Stream.REVEAL, 7, 1000).flatten().double()
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    expected = n / 10
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 40  # chi-square with 9 d.o.f.: P(> 40) < 1e-5
    assert ((counts - expected).abs() < 0.03 * expected).all()


def test_gumbel_has_the_euler_mascheroni_mean():
    noise = TrajectoryNoise.for_prompts(0, ["a", "b"], 2)
    g = noise.gumbel(Stream.ORDER, 0, 50_000).double()
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772156649) < 0.02
    assert abs(g.var().item() - math.pi**2 / 6) < 0.06


def test_every_counter_component_changes_the_numbers():
    """Stream, step, iteration, position, seed, prompt and sample index all give new draws."""
    base = TrajectoryNoise.for_prompts(1, ["p"], 2)
    ref = base.uniform(Stream.COMMIT_TOKEN, 0, 64)
    variants = {
        "stream": base.uniform(Stream.REVEAL, 0, 64),
        "step": base.uniform(Stream.COMMIT_TOKEN, 1, 64),
        "iteration": base.uniform(Stream.COMMIT_TOKEN, 0, 64, iteration=1),
        "seed": TrajectoryNoise.for_prompts(2, ["p"], 2).uniform(Stream.COMMIT_TOKEN, 0, 64),
        "prompt": TrajectoryNoise.for_prompts(1, ["q"], 2).uniform(Stream.COMMIT_TOKEN, 0, 64),
    }
    for what, other in variants.items():
        assert not torch.isclose(other, ref).any(), f"changing the {what} left some draws unchanged"
    assert not torch.isclose(ref[0], ref[1]).any(), "samples k=0 and k=1 share draws"
    assert ref[0].unique().numel() == 64, "positions share draws"


def test_same_counter_gives_the_same_numbers():
    a = TrajectoryNoise.for_prompts(5, ["x", "y"], 3).uniform(Stream.GUIDANCE_TOKEN, 4, 10, iteration=2)
    b = TrajectoryNoise.for_prompts(5, ["x", "y"], 3).uniform(Stream.GUIDANCE_TOKEN, 4, 10, iteration=2)
    assert torch.equal(a, b)


def test_a_trajectory_does_not_depend_on_its_batch():
    """Rows of prompt 'b' are the same alone, first, or last in a batch (row b*K + k layout)."""
    k = 3
    alone = TrajectoryNoise.for_prompts(9, ["b"], k).uniform(Stream.COMMIT_TOKEN, 2, 16)
    in_middle = TrajectoryNoise.for_prompts(9, ["a", "b", "c"], k).uniform(Stream.COMMIT_TOKEN, 2, 16)
    at_start = TrajectoryNoise.for_prompts(9, ["b", "z"], k).uniform(Stream.COMMIT_TOKEN, 2, 16)
    assert torch.equal(in_middle[k : 2 * k], alone)
    assert torch.equal(at_start[:k], alone)
    # a longer request only appends positions
    longer = TrajectoryNoise.for_prompts(9, ["b"], k).uniform(Stream.COMMIT_TOKEN, 2, 40)
    assert torch.equal(longer[:, :16], alone)


def test_golden_values():
    """Recorded draws (and a prompt key that Python's salted hash() would change per process).

    A change here silently changes every published sample.
    """
    noise = TrajectoryNoise.for_prompts(1, ["tiny-0"], 2)
    assert prompt_key("tiny-0") == 2748741925
    assert noise.keys.tolist() == [171273951, 1214270932]
    expected = torch.tensor([[0.98609895, 0.14863890, 0.84939569], [0.69672137, 0.94267660, 0.35251302]])
    torch.testing.assert_close(noise.uniform(Stream.COMMIT_TOKEN, 0, 3), expected, atol=1e-7, rtol=0)
