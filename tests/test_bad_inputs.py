"""Bad inputs stop a job before any model loads with one line naming the key (issue 15).

The slow table test runs the real CLI on every case of tests/bad_inputs.py; the fast tests call
each check of `entrgi.preflight` and the run directory's post-processing in-process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_inputs import BASE, cases

from entrgi.benchmarks import Prompt
from entrgi.components import build
from entrgi.experiment import run_experiment
from entrgi.preflight import (
    check_checkpoint,
    check_devices,
    check_inputs,
    check_job,
    check_judges,
    configure_threads,
)
from entrgi.toy.world import toy_world_path
from entrgi.validation import ConfigError
from entrgi.weights import WeightsUnavailable

QWEN2 = "Qwen2Tokenizer"  # conf/model/dream-7b.yaml: the checkpoint names a remote-code class
REPO = Path(__file__).resolve().parents[1]
TABLE = cases(Path(os.environ.get("ENTRGI_BAD_INPUTS", "/tmp")) / f"entrgi-bad-inputs-{os.getpid()}")


@pytest.mark.slow
@pytest.mark.parametrize(("what", "overrides", "key"), TABLE, ids=[c[0] for c in TABLE])
def test_the_cli_refuses_a_bad_input_with_one_line(tmp_path, what, overrides, key):
    run_dir = tmp_path / "run"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "entrgi.run", *BASE, *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (what, done.stderr[-2000:])
    assert len(errors) == 1 and key in errors[0], errors
    assert "Traceback" not in done.stderr + done.stdout
    assert not list(tmp_path.rglob("summary.json"))  # no run claims to be finished
    assert not list(tmp_path.rglob("samples.jsonl"))  # refused before generating anything


def test_a_misspelt_experiment_fails_like_any_unknown_option(compose):
    from hydra.errors import MissingConfigException

    assert compose(["experiment=tiny"]).model.device == "cpu"
    assert compose([]).model.path == "Dream-org/Dream-v0-Instruct-7B"  # no experiment by default
    with pytest.raises(MissingConfigException, match="experiment/tinny"):
        compose(["experiment=tinny"])


def _damaged(tmp_path, part, damage) -> str:
    target = tmp_path / part
    shutil.copytree(toy_world_path(part), target)
    damage(target)
    return str(target)


def test_checkpoint_checks_name_the_key_and_the_file(tmp_path):
    checked = check_checkpoint(str(toy_world_path("dllm")), "model.path", tokenizer_class=QWEN2)
    assert checked.config["max_position_embeddings"] == 512
    cut = _damaged(tmp_path, "dllm", lambda d: (d / "config.json").write_text('{"vocab_size": 1'))
    with pytest.raises(WeightsUnavailable, match=r"model.path=.*config.json is not valid JSON"):
        check_checkpoint(cut, "model.path")
    short = _damaged(tmp_path, "reward", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-100]))
    with pytest.raises(WeightsUnavailable, match=r"reward.path=.*model.safetensors is truncated"):
        check_checkpoint(short, "reward.path")
    shutil.rmtree(tmp_path / "dllm")
    bare = _damaged(tmp_path, "dllm", lambda d: [(d / n).unlink() for n in ("vocab.json", "merges.txt")])
    with pytest.raises(WeightsUnavailable, match=r"model.path=.* has no tokenizer"):
        check_checkpoint(bare, "model.path", tokenizer_class=QWEN2)


def test_cuda_without_cuda_names_the_key(compose, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_devices(compose(["experiment=tiny"]))
    for key in ("model.device", "reward.device"):
        with pytest.raises(ConfigError, match=f"{key}='cuda:1' but this machine has no usable CUDA device"):
            check_devices(compose(["experiment=tiny", f"{key}=cuda:1"]))


def test_coverage_is_decided_from_the_tokenizers(compose, caplog):
    cfg = compose(["experiment=tiny", "guidance=entrgi"])
    prompts = [Prompt("p", "Describe a grey frog that sleeps by the field.")]
    with caplog.at_level(logging.WARNING, logger="entrgi.preflight"):
        assert check_inputs(cfg, prompts) == prompts
    assert any("92.45% of the dLLM's tokens map exactly" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"guidance.min_coverage=0.93: only 0.9245 of the dLLM vocabulary"):
        check_inputs(compose(["experiment=tiny", "guidance=entrgi", "guidance.min_coverage=0.93"]), prompts)
    with pytest.raises(ConfigError, match=r"guidance.proposal.min_coverage=0.93: only 0.9245"):  # inside SMC
        check_inputs(compose(["experiment=tiny", "guidance=entrgi-smc", "guidance.proposal.min_coverage=0.93"]),
                     prompts)


def test_a_prompt_too_long_is_refused_or_cut_from_the_left(compose, caplog):
    head = " ".join(f"w{i}" for i in range(900))
    tail = "Describe a grey frog that sleeps by the field."
    prompts = [Prompt("short", tail), Prompt("long", f"{head} {tail}")]
    with pytest.raises(ConfigError, match=r"benchmark.truncate=none: prompt 'long' needs \d+ positions in the dLLM "
                                          r"and \d+ in the RM .*limits: dLLM 512, RM 1024 positions"):
        check_inputs(compose(["experiment=tiny", "evaluator=[]"]), prompts)
    with caplog.at_level(logging.WARNING, logger="entrgi.preflight"):
        fitted = check_inputs(compose(["experiment=tiny", "evaluator=[]", "benchmark.truncate=left"]), prompts)
    assert fitted[0] == prompts[0]
    assert fitted[1].id == "long" and fitted[1].text.endswith(tail) and len(fitted[1].text) < len(prompts[1].text)
    assert prompts[1].text.endswith(fitted[1].text)  # the start is cut, the request at the end is kept
    assert any("cut the start of 1 of 2 prompts" in r.getMessage() for r in caplog.records)
    from entrgi.models.diffusion_lm import encode_prompt

    dllm = check_checkpoint(str(toy_world_path("dllm")), "model.path", tokenizer_class=QWEN2)
    assert len(encode_prompt(dllm.tokenizer, fitted[1].text)) + 16 <= 512  # max_new_tokens of experiment=tiny
    with pytest.raises(ConfigError, match="sampler.max_new_tokens=600 leaves no room"):
        check_inputs(compose(["experiment=tiny", "evaluator=[]", "benchmark.truncate=left",
                              "sampler.max_new_tokens=600", "schedule.steps=600"]), prompts)


def test_the_oracle_refuses_prompts_it_cannot_judge(compose):
    node = compose(["experiment=tiny"]).evaluator
    check_judges(node, [Prompt("t", "Describe a grey frog that sleeps by the field.")])
    with pytest.raises(ConfigError, match=r"evaluator=oracle cannot judge this benchmark: .*prompt 'x' is not one"):
        check_judges(node, [Prompt("x", "Write a poem.")])


def test_wasteful_settings_are_said_once_and_unset_keys_refused(compose, caplog):
    cfg = compose(["experiment=tiny", "schedule.steps=32", "sampler.max_new_tokens=14"])
    with caplog.at_level(logging.WARNING, logger="entrgi.preflight"):
        check_job(cfg, build(cfg.schedule))
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("schedule.steps=32 is more than sampler.max_new_tokens=14: ")
    assert "steps commit nothing" in line
    with pytest.raises(ConfigError, match=r"benchmark.path is not set"):
        check_job(compose(["experiment=tiny", "benchmark=prompts"]))


def test_threads_default_to_one_on_the_cpu(compose):
    before = torch.get_num_threads()
    try:
        assert configure_threads(compose(["experiment=tiny"])) == 1
        assert configure_threads(compose(["experiment=tiny", "run.threads=2"])) == 2
    finally:
        torch.set_num_threads(before)


def test_resume_with_duplicate_ids_is_refused(compose, tmp_path, one_thread):
    data = tmp_path / "p.jsonl"
    rows = [{"text": "Describe a grey frog that sleeps by the field.", "id": "a"},
            {"text": "Describe a red fox that runs in the forest.", "id": "b"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose([*BASE, "benchmark=prompts", f"benchmark.path={data}", "benchmark.prompt_field=text",
                   "benchmark.id_field=id", "evaluator=[]", "sampler.batch_size=1"])
    out = tmp_path / "run"
    run_experiment(cfg, out)
    (out / "summary.json").unlink()  # as if killed before the end
    samples = (out / "samples.jsonl").read_text()
    data.write_text(data.read_text() + json.dumps({"text": "Describe a blue owl.", "id": "a"}) + "\n")
    with pytest.raises(ConfigError, match=r"id 'a' is used by rows 0, 2"):
        run_experiment(cfg, out)
    assert (out / "samples.jsonl").read_text() == samples and not (out / "summary.json").exists()


def test_no_deprecation_warning_on_guided_steps(toy_reward, recwarn, caplog):
    """The RM's embedding path (prefix cache, masks, backward) warns about nothing, call after call."""
    layout = toy_reward.layout(["Describe a grey frog that sleeps by the field."], 2, 4)
    embeds = toy_reward.embedding_table[:4].unsqueeze(0).repeat(2, 1, 1).detach().clone().requires_grad_(True)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            toy_reward.score_embeds(layout, embeds, torch.ones(2, 4, dtype=torch.bool)).sum().backward()
    assert layout.prefix_cache is not None  # the cached path, which passes a cache to transformers
    assert not [str(w.message) for w in recwarn if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


@pytest.fixture(scope="module")
def finished_run(compose, tmp_path_factory):
    """A finished two-prompt toy run (no judges yet)."""
    folder = tmp_path_factory.mktemp("finished")
    data = folder / "p.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in (
        "Describe a grey frog that sleeps by the field.", "Describe a red fox that runs in the forest.")))
    before = torch.get_num_threads()
    run_experiment(compose([*BASE, "benchmark=prompts", f"benchmark.path={data}", "benchmark.prompt_field=text",
                            "evaluator=[]"]), folder / "run")
    torch.set_num_threads(before)
    return folder / "run"


def test_report_and_evaluate_skip_a_run_with_a_corrupted_summary(finished_run, tmp_path, capsys, caplog):
    from entrgi.evaluators.judging import finished_runs
    from entrgi.report import main as report

    good, bad = tmp_path / "sweep" / "good", tmp_path / "sweep" / "bad"
    shutil.copytree(finished_run, good)
    shutil.copytree(finished_run, bad)
    (bad / "summary.json").write_text('{"top1_mean": 0.')
    assert report([str(tmp_path / "sweep"), "--no-figures", "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert f"incomplete, left out: {bad.resolve()}: corrupted {bad.resolve() / 'summary.json'}: JSONDecodeError" in out
    assert "1 runs in 1 rows" in out
    with caplog.at_level(logging.WARNING, logger="entrgi.evaluators.judging"):
        assert finished_runs([str(tmp_path / "sweep")]) == [good.resolve()]
    assert any(f"corrupted {bad.resolve() / 'summary.json'}" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_path_that_is_not_a_run_is_one_line_for_evaluate(tmp_path):
    from entrgi.evaluate import paths_to_override

    missing = "outputs/runs/experiment=tinyy,seed=1"
    assert paths_to_override([missing, "evaluator=[tiny-judge]"]) == ["evaluator=[tiny-judge]", f"runs=['{missing}']"]
    assert paths_to_override(["hydra/launcher=slurm-judge"]) == ["hydra/launcher=slurm-judge"]
    done = subprocess.run([sys.executable, "-m", "entrgi.evaluate", str(tmp_path / "nope"), "evaluator=[tiny-judge]"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    expected = f"entrgi.evaluate: error: {tmp_path / 'nope'}: no such file or directory"
    assert done.stderr.strip().splitlines() == [expected]


def test_a_refused_duplicate_job_leaves_the_other_jobs_directory_alone(finished_run, tmp_path):
    from entrgi.run_directory import ERROR, RunDirectory, RunDirectoryBusy
    from entrgi.sweeps import clear_error, write_error

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / ERROR).write_text("{}")  # as if the running job had recorded something
    with RunDirectory(run).lock():  # the first job is running
        clear_error(run)
        assert (run / ERROR).is_file()  # not the duplicate's to delete
        (run / ERROR).unlink()
        write_error(run, RunDirectoryBusy(f"{run} is being written by another job"))
    assert not (run / ERROR).exists()
    write_error(run, ConfigError("bad"))  # any other failure is recorded
    assert (run / ERROR).exists()


def test_judge_keys_come_back_after_a_kill_between_judgements_and_summary(finished_run, tmp_path, tiny_judges):
    from entrgi.evaluators.judging import apply_evaluators

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        node = hydra_compose(config_name="evaluate", overrides=["evaluator=[tiny-judge]"]).evaluator
    apply_evaluators(node, [run])
    judged = json.loads((run / "summary.json").read_text())
    assert "tiny-judge_top1_mean" in judged
    bare = {k: v for k, v in judged.items() if not k.startswith("tiny-judge_") and k != "evaluators"}
    (run / "summary.json").write_text(json.dumps(bare))  # killed before the last summary write
    assert apply_evaluators(node, [run], skip_judged=True) == {run: {}}  # nothing judged again ...
    assert json.loads((run / "summary.json").read_text()) == judged  # ... and the keys are back


@pytest.mark.parametrize("top_p", [1e-13, 1e-300, 2.0 ** -41])
def test_a_tiny_top_p_keeps_the_top_token(top_p):
    from entrgi.categorical import sample_nucleus

    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, -1.0, 0.0, 2.0]])
    uniform = torch.tensor([0.999, 0.001])
    assert sample_nucleus(logits, uniform, top_p).tolist() == [1, 0]  # ties: the first in vocabulary order
