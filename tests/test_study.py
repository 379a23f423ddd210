"""The toy-world study's parts that need no trained model: the `arm` options and the oracle judge."""

from __future__ import annotations

import pytest

from entrgi.config import ARM_SAMPLES, ARM_STEPS
from entrgi.evaluators.oracle import ToyOracle
from entrgi.validation import ConfigError


def test_an_arm_selects_its_guidance_and_steps(compose):
    baseline = compose(["experiment=tiny", "+arm=none"])
    assert baseline.guidance._target_.endswith("NoGuidance") and "M" not in baseline.guidance
    for method in ("soft", "aps", "entrgi"):
        cfg = compose(["experiment=tiny", f"+arm={method}-M6"])
        assert (cfg.guidance.rule, cfg.guidance.M) == (method, 6)
        assert cfg.guidance.eta == 0.5  # everything else is the method's own option


def test_the_study_sweeps_existing_arms_and_three_seeds(compose):
    from hydra.core.hydra_config import HydraConfig

    compose(["experiment=tiny-study"])
    params = HydraConfig.get().sweeper.params
    arms = params["+arm"].split(",")
    assert arms[0] == "none" and len(arms) == 1 + 3 * 5
    assert {int(arm.rsplit("-M", 1)[1]) for arm in arms[1:]} == {1, 2, 3, 4, 6} <= set(ARM_STEPS)
    assert params["seed"] == "1,2,3"
    for arm in arms:
        compose(["experiment=tiny", f"+arm={arm}"])  # every cell composes


def test_a_k_arm_selects_its_guidance_and_samples(compose):
    for method, target in (("none", "NoGuidance"), ("fk", "FKGuidance"), ("entrgi-smc", "SMCGuidance")):
        cfg = compose(["experiment=tiny", f"+arm={method}-K16"])
        assert cfg.guidance._target_.endswith(target) and cfg.sampler.num_samples == 16
    assert compose(["experiment=tiny", "+arm=entrgi-K4"]).guidance.M == 3  # the option's own M


def test_the_particle_study_sweeps_best_of_n_fk_and_entrgi_cells(compose):
    from hydra.core.hydra_config import HydraConfig

    compose(["experiment=particle-study"])
    params = HydraConfig.get().sweeper.params
    arms = params["+arm"].split(",")
    assert arms == ["none-K4", "none-K8", "none-K16", "none-K32", "fk-K4", "fk-K8", "entrgi-K4", "entrgi-smc-K4"]
    assert {int(arm.rsplit("-K", 1)[1]) for arm in arms} <= set(ARM_SAMPLES)
    assert params["seed"] == "1,2,3"
    for arm in arms:
        compose(["experiment=tiny", f"+arm={arm}"])


def test_the_oracle_judge_scores_every_response_with_the_ground_truth():
    from entrgi.toy.grammar import Request, Scene, render_prompt, render_response
    from entrgi.toy.oracle import oracle

    prompt = render_prompt(Request("describe", animal="frog", color="grey"))
    good = render_response(Scene("frog", "grey", "sleeps", "field"))
    wrong_colour = render_response(Scene("frog", "red", "sleeps", "field"))
    judge = ToyOracle()
    assert judge.responses == "all"
    scores = [j.score for j in judge.score([prompt] * 3, [good, wrong_colour, "the the frog"])]
    assert scores == [oracle(prompt, good), oracle(prompt, wrong_colour), 0.0]
    assert scores[0] > scores[1] > scores[2]


def test_the_oracle_refuses_prompts_from_another_benchmark():
    with pytest.raises(ConfigError, match="toy-world prompts only"):
        ToyOracle().score(["What is the capital of France?"], ["Paris."])
