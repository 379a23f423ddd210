"""NaN / inf logits stop a batch with one line naming the model, the step and the prompts (issue 15, item 2).

`entrgi.categorical` keeps every draw a token id on such logits (tests/test_categorical.py); the
sampler records on the device where they came from (tests/test_host_sync.py: without a host read)
and raises NonFiniteLogits once the batch's loop is done.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import guidance_config, nan_from_call
from hydra.core.global_hydra import GlobalHydra

from entrgi.guidance import NoGuidance, RewardGradientGuidance
from entrgi.models import DiffusionLM
from entrgi.nonfinite import NonFiniteLogits
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import (
    EntropySchedule,
    LowConfidenceConfig,
    LowConfidenceSchedule,
    MaskGitPlusSchedule,
    OriginSchedule,
    ScheduleConfig,
    TopKMarginSchedule,
)

PROMPTS = ["Describe the cat.", "Why is the old robot happy?"]
IDS = ["cat-1", "robot-7"]


def _sampler(model, guidance) -> DiffusionSampler:
    return DiffusionSampler(SamplerConfig(num_samples=2, max_new_tokens=6), model=model,
                            schedule=EntropySchedule(ScheduleConfig(steps=4)), guidance=guidance)


@pytest.mark.parametrize("guided", [False, True])
def test_nan_dllm_logits_name_the_model_the_step_and_the_prompts(random_model, random_reward, guided):
    """Guided logits go NaN with the dLLM's at the same step: the dLLM is named, being the first."""
    guidance = (RewardGradientGuidance(guidance_config(rule="entrgi", M=1), model=random_model, reward=random_reward)
                if guided else NoGuidance())
    with nan_from_call(random_model, "logits", 2), pytest.raises(NonFiniteLogits) as error:
        _sampler(random_model, guidance).generate(PROMPTS, IDS, seed=0)
    message = str(error.value)
    assert message == (f"logits with NaN or inf from the dLLM (model.path={random_model.config.path}) at denoising "
                       "step 2 of 4, batch of prompts cat-1, robot-7")


@pytest.mark.parametrize("first", [0, 3])
def test_nan_guided_logits_name_the_reward_model(random_model, random_reward, first):
    """A NaN reward (say a bf16 overflow) makes NaN gradients, and NaN guided logits after the Adam step."""
    guidance = RewardGradientGuidance(guidance_config(rule="aps", M=1), model=random_model, reward=random_reward)
    with nan_from_call(random_reward, "score_embeds", first), pytest.raises(NonFiniteLogits) as error:
        _sampler(random_model, guidance).generate(PROMPTS, IDS, seed=0)
    assert str(error.value) == (
        f"guided logits with NaN or inf from guidance (guidance.rule=aps through reward.path="
        f"{random_reward.config.path}) at denoising step {first} of 4, batch of prompts cat-1, robot-7"
    )


@pytest.mark.parametrize("temperature", [0.7, 0.0])
@pytest.mark.parametrize("schedule", [EntropySchedule, MaskGitPlusSchedule, OriginSchedule, TopKMarginSchedule,
                                      LowConfidenceSchedule])
def test_every_schedule_reaches_the_end_of_the_loop_on_nan_logits(random_model, schedule, temperature):
    """NaN from the first step on: confidences, draws and commits do not fail before the check can report."""
    config = LowConfidenceConfig(steps=4, block_length=3) if schedule is LowConfidenceSchedule else \
        ScheduleConfig(steps=4, alg_temp=0.5)
    sampler = DiffusionSampler(SamplerConfig(num_samples=2, max_new_tokens=6, temperature=temperature),
                               model=random_model, schedule=schedule(config), guidance=NoGuidance())
    with nan_from_call(random_model, "logits", 0), pytest.raises(NonFiniteLogits, match="at denoising step 0 of 4"):
        sampler.generate(PROMPTS, IDS, seed=0)


def test_a_finite_run_raises_nothing(random_model):
    generation = _sampler(random_model, NoGuidance()).generate(PROMPTS, IDS, seed=0)
    assert (generation.responses != random_model.mask_token_id).all()


def test_the_cli_stops_a_job_on_nan_logits_with_one_line(tmp_path, monkeypatch, capsys):
    """`python -m entrgi.run experiment=tiny` (its `main`, in this process, so the forward can be patched):
    exit 2, one line naming the dLLM, the step and the batch's prompts, error.json, no finished run."""
    from entrgi.run import main
    from entrgi.toy.world import toy_world_path

    run_dir = tmp_path / "job"
    # Hydra's logging left as it is: its handlers would outlive this test in the pytest process.
    monkeypatch.setattr(sys, "argv", ["entrgi.run", "experiment=tiny", "guidance=entrgi", "logger=none",
                                      "benchmark.n_prompts=4", "schedule.steps=4", "sampler.max_new_tokens=6",
                                      f"hydra.run.dir={run_dir}", "hydra/job_logging=none",
                                      "hydra/hydra_logging=none"])
    try:
        with nan_from_call(DiffusionLM, "logits", 1), pytest.raises(SystemExit) as exit_:
            main()
    finally:
        GlobalHydra.instance().clear()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("entrgi: error:")]
    batch = json.loads((run_dir / "run.json").read_text())["prompt_ids"]  # the job's 4 prompts: one batch
    assert errors == [f"entrgi: error: logits with NaN or inf from the dLLM (model.path={toy_world_path('dllm')}) at "
                      f"denoising step 1 of 4, batch of prompts {', '.join(batch)}"], err
    assert err.rstrip().endswith(errors[0]) and "Traceback" not in err
    assert json.loads((run_dir / "error.json").read_text())["type"] == "NonFiniteLogits"
    assert not (run_dir / "summary.json").exists() and not (run_dir / "samples.jsonl").exists()
