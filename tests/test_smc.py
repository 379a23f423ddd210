"""`guidance=entrgi-smc` (and soft-smc, aps-smc): a reward-gradient proposal inside Feynman–Kac SMC.

The importance weight by hand on a tiny vocabulary; exactly fk's weights and samples when the proposal
changes nothing; weight-0 particles; determinism and batch invariance with resampling on (toy world,
CPU); the config options; an end-to-end job's statistics.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import guidance_config

from entrgi.categorical import draw_logits, sample_filtered
from entrgi.guidance import Committed, FKConfig, FKGuidance, NoGuidance, SMCConfig, SMCGuidance
from entrgi.guidance.smc import importance_log_ratio
from entrgi.noise import TrajectoryNoise
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, ScheduleConfig
from entrgi.toy.world import prompts_path
from entrgi.validation import ConfigError, validate

K, STEPS, LENGTH = 4, 6, 10
NINF = float("-inf")
MASK = 3  # the tiny vocabulary: tokens 0, 1, 2 and <mask>


def _committed(unguided, guided, drawn, commit, planned, temperature, top_p, top_k=None, **rest) -> Committed:
    """A step's commit on tiny tensors: logits [N, L, 4], drawn [N, L], commit [N, L]."""
    response = torch.where(commit, drawn, torch.full_like(drawn, MASK))
    fields = {"step": 0, "noise": None, "num_samples": 1, **rest}
    return Committed(response=response, mask_token_id=MASK, logits=guided, drawn=drawn, unguided=unguided,
                     commit=commit, planned=planned, temperature=temperature, top_p=top_p, top_k=top_k, **fields)


def _logits(*positions) -> torch.Tensor:
    """[1, L, 4] from per-position logits of tokens 0-2; <mask> gets the largest logit, which the draw excludes."""
    return torch.tensor([[[*p, 9.0] for p in positions]])


E2 = math.exp(2)
# τ = 0.5 doubles the logits; top_p = 0.8. Row 0:
#   position 0: p = softmax(2, 2, 0) = (.468, .468, .063): nucleus {0, 1}, p̃(1) = 1/2;
#               q = softmax(0, 2, 0) = (.107, .787, .107): nucleus {1, 0}, q̃(1) = e²/(1 + e²); drawn 1.
#   position 1: p = uniform: nucleus all three (mass before token 2 is 2/3 < .8), p̃(0) = 1/3;
#               q = softmax(0, 0, 2): nucleus {2, 0}, q̃(0) = 1/(1 + e²); drawn 0.
#   position 2: drawn (token 1, outside p's nucleus) but not committed: left out.
# Row 1: position 0 p = softmax(4, 2, 0) = (.867, .117, .016): nucleus {0}; q's {1}; drawn 1: p̃ = 0.
ROW0 = math.log((1 + E2) / (2 * E2)) + math.log((1 + E2) / 3)
HAND = {
    "unguided": torch.cat([_logits((1, 1, 0), (0, 0, 0), (5, 0, 0)), _logits((2, 1, 0), (0, 0, 0), (0, 0, 0))]),
    "guided": torch.cat([_logits((0, 1, 0), (0, 0, 1), (0, 5, 0)), _logits((1, 2, 0), (0, 0, 0), (0, 0, 0))]),
    "drawn": torch.tensor([[1, 0, 1], [1, 2, 0]]),
    "commit": torch.tensor([[True, True, False], [True, True, False]]),
}


@pytest.mark.parametrize("planned", [(3, 2), None], ids=["planned", "all-columns"])
def test_the_log_weight_by_hand(planned):
    """log p/q over the committed positions under τ = 0.5 and top-p = 0.8, filtered and renormalised."""
    ratio = importance_log_ratio(_committed(**HAND, planned=planned, temperature=0.5, top_p=0.8))
    assert ratio[0].item() == pytest.approx(ROW0, rel=1e-5)
    assert ratio[1].item() == NINF  # a token outside the model's nucleus: weight 0
    plain = importance_log_ratio(_committed(**HAND, planned=planned, temperature=1.0, top_p=1.0))
    assert plain[0].item() != pytest.approx(ROW0, rel=1e-3)  # τ and top-p matter


def test_a_greedy_draw_weighs_one_where_the_argmaxes_agree():
    """τ = 0: the draw is q's argmax; the ratio is 1 where p's argmax is the same token, else 0."""
    guided = torch.cat([_logits((0, 1, 0), (0, 0, 1)), _logits((0, 1, 0), (0, 0, 1))])
    unguided = torch.cat([_logits((0, 2, 0), (0, 0, 3)), _logits((0, 2, 0), (1, 0, 0))])
    drawn = torch.tensor([[1, 2], [1, 2]])  # the argmaxes of q
    commit = torch.ones(2, 2, dtype=torch.bool)
    ratio = importance_log_ratio(_committed(unguided, guided, drawn, commit, (2, 2), temperature=0.0, top_p=1.0))
    assert ratio.tolist() == [0.0, NINF]


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.95), (1.0, 0.5), (0.0, 1.0)])
def test_unchanged_logits_weigh_exactly_one(temperature, top_p):
    logits = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1)) * 3
    uniforms = None if temperature == 0 else torch.rand(3, 5, generator=torch.Generator().manual_seed(2))
    drawn = sample_filtered(draw_logits(logits, temperature, MASK), uniforms, top_p, distribution=False)[0]
    commit = torch.rand(3, 5, generator=torch.Generator().manual_seed(3)) < 0.5
    ratio = importance_log_ratio(_committed(logits, logits, drawn, commit, None, temperature, top_p))
    assert torch.equal(ratio, torch.zeros(3))


# --- on the toy world ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompts() -> tuple[list[str], list[str]]:
    lines = [json.loads(line) for line in prompts_path().read_text().splitlines()[:3]]
    return [line["prompt"] for line in lines], [str(line.get("id", i)) for i, line in enumerate(lines)]


def _sampler(model, guidance) -> DiffusionSampler:
    return DiffusionSampler(SamplerConfig(num_samples=K, max_new_tokens=LENGTH, temperature=0.7, top_p=0.95),
                            model=model, schedule=EntropySchedule(ScheduleConfig(steps=STEPS)), guidance=guidance)


def _smc(model, reward, steering: dict, **proposal) -> SMCGuidance:
    config = SMCConfig(proposal=guidance_config(**proposal), steering=FKConfig(**steering))
    return SMCGuidance(config, model=model, reward=reward)


RESAMPLING = {"resample_every": 2, "ess_threshold": 0.9, "strength": 20.0}


def test_with_no_gradient_step_it_is_fk_exactly(toy_model, toy_reward, prompts):
    """proposal.M = 0: q = p, every log-ratio exactly 0, so fk's weights, resamplings and samples."""
    texts, ids = prompts
    smc = _sampler(toy_model, _smc(toy_model, toy_reward, RESAMPLING, M=0)).generate(texts, ids, seed=5)
    fk = _sampler(toy_model, FKGuidance(FKConfig(**RESAMPLING), model=toy_model, reward=toy_reward))
    fk = fk.generate(texts, ids, seed=5)
    assert torch.equal(smc.responses, fk.responses)
    for mine, theirs in zip(smc.steps[:-1], fk.steps[:-1], strict=True):
        assert (mine["ess_mean"], mine["resampled_fraction"]) == (theirs["ess_mean"], theirs["resampled_fraction"])
        assert (mine["log_importance_mean"], mine["zero_weight_fraction"]) == (0.0, 0.0)
    assert sum(row["resampled_fraction"] for row in smc.steps[:-1]) > 0


def test_with_no_gradient_step_and_no_resampling_it_is_best_of_n(toy_model, toy_reward, prompts):
    texts, ids = prompts
    smc = _smc(toy_model, toy_reward, {"ess_threshold": 0.0}, M=0)
    plain = _sampler(toy_model, NoGuidance()).generate(texts, ids, seed=9).responses
    assert torch.equal(_sampler(toy_model, smc).generate(texts, ids, seed=9).responses, plain)


def test_the_log_weights_vanish_with_the_learning_rate(toy_model, toy_reward, prompts):
    """η → 0: the log-ratios go to 0 (η = 0.5 moves them, so the check can fail)."""
    texts, ids = prompts

    def log_weights(eta: float) -> list[float]:
        steps = _sampler(toy_model, _smc(toy_model, toy_reward, {"ess_threshold": 1e-6}, M=2, eta=eta))
        return [row["log_importance_mean"] for row in steps.generate(texts, ids, seed=3).steps[:-1]]

    assert all(abs(value) < 1e-4 for value in log_weights(1e-9))
    assert min(log_weights(0.5)) < -0.05


def test_smc_is_deterministic_and_batch_invariant(toy_model, toy_reward, prompts):
    """Guided and resampled: the same samples run to run and whether a prompt is alone or batched; another seed
    gives others. The proposal does move the weights, and some resampling happens."""
    texts, ids = prompts
    sampler = _sampler(toy_model, _smc(toy_model, toy_reward, RESAMPLING, M=1))
    batched = sampler.generate(texts, ids, seed=5)
    assert torch.equal(batched.responses, sampler.generate(texts, ids, seed=5).responses)
    assert not torch.equal(batched.responses, sampler.generate(texts, ids, seed=6).responses)
    assert sum(row["resampled_fraction"] for row in batched.steps[:-1]) > 0
    assert any(row["log_importance_mean"] < 0 for row in batched.steps[:-1])
    for i in range(len(texts)):
        alone = sampler.generate(texts[i : i + 1], ids[i : i + 1], seed=5).responses
        assert torch.equal(alone, batched.responses[i * K : (i + 1) * K])


@pytest.mark.parametrize("log_ratio,rewards,zero_fraction", [
    ((NINF, 0.0), (3.0, 3.0), 0.5),  # equal potentials: the weight-0 particle is never an ancestor
    ((NINF, NINF), (0.0, 100.0), 1.0),  # all at weight 0: the ratios are dropped, the potential decides
])
def test_weight_zero_particles(toy_model, toy_reward, monkeypatch, log_ratio, rewards, zero_fraction):
    fk = FKGuidance(FKConfig(strength=1.0, ess_threshold=0.9), model=toy_model, reward=toy_reward)
    fk.begin_batch(["a prompt"], 2, 3)
    monkeypatch.setattr(fk.bridged, "score_tokens", lambda layout, tokens: torch.tensor(rewards))
    drawn = torch.tensor([[4, 5, 6], [4, 5, 6]])
    committed = _committed(torch.zeros(2, 3, 8), torch.zeros(2, 3, 8), drawn, torch.ones(2, 3, dtype=torch.bool),
                           None, 0.7, 0.95, noise=TrajectoryNoise.for_prompts(1, ["p"], 2), num_samples=2)
    resampling = fk.resample(committed, torch.tensor(log_ratio))
    assert resampling.ancestors.tolist() == [[1, 1]]
    assert resampling.stats["zero_weight_fraction"].item() == zero_fraction
    assert resampling.stats["resampled_fraction"].item() == 1.0
    assert fk.log_ratio.tolist() == [0.0, 0.0]  # resampled: the copies restart with equal weights


# --- config and job ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["entrgi", "soft", "aps"])
def test_the_options_compose_the_proposal_and_fk(compose, rule):
    cfg = compose([f"guidance={rule}-smc"])
    validate(cfg)
    assert cfg.guidance._target_ == "entrgi.guidance.SMCGuidance" and cfg.name == f"{rule}-smc"
    assert cfg.guidance.proposal == compose([f"guidance={rule}"]).guidance
    assert cfg.guidance.steering == compose(["guidance=fk"]).guidance


def test_every_key_is_settable_alone(compose):
    cfg = compose(["guidance=entrgi-smc", "guidance.proposal.M=0", "guidance.steering.strength=2.5",
                   "guidance.proposal.rule=aps", "guidance.steering.resample_every=3"])
    assert (cfg.guidance.proposal.M, cfg.guidance.proposal.rule) == (0, "aps")
    assert (cfg.guidance.steering.strength, cfg.guidance.steering.resample_every) == (2.5, 3)
    assert cfg.guidance.steering.ess_threshold == 0.5 and cfg.guidance.proposal.eta == 0.5  # the rest as composed
    with pytest.raises(ConfigError, match=r"^guidance\.steering\.ess_threshold=2\.0 is not allowed"):
        validate(compose(["guidance=entrgi-smc", "guidance.steering.ess_threshold=2"]))


def test_smc_job_logs_its_weights(compose, tmp_path):
    from entrgi.experiment import run_experiment

    cfg = compose(["experiment=tiny", "guidance=entrgi-smc", "guidance.proposal.M=1", "logger=none",
                   "schedule.steps=4", "sampler.max_new_tokens=6", "benchmark.n_prompts=2", "evaluator=[]"])
    summary = run_experiment(cfg, tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    keys = ("ess_mean", "log_importance_mean", "zero_weight_fraction", "reward_curve")
    assert [all(key in row for key in keys) for row in steps] == [True] * 3 + [False]
    assert all(math.isfinite(row["log_importance_mean"]) and 0 <= row["zero_weight_fraction"] <= 1 for row in steps[:3])
    assert summary["guidance"] == "entrgi-smc"
    assert {"ess_mean", "log_importance_mean", "zero_weight_fraction", "vocab_coverage"} <= summary.keys()
