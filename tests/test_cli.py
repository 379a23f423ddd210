"""`entrgi.cli.hydra_command`: a command line Hydra cannot compose is one stderr line and exit code 2;
the job itself keeps Hydra's own error report and the user's HYDRA_FULL_ERROR (issue 15).

The commands are called in-process with a task that records what it was given (no model loads);
tests/bad_inputs.py runs the same inputs through the real `python -m entrgi.run` (slow tier).
"""

from __future__ import annotations

import os
import sys

import pytest
from conftest import CONF
from hydra.errors import ConfigCompositionException, MissingConfigException

from entrgi.cli import hydra_command

FULL_ERROR = "HYDRA_FULL_ERROR"
# Nothing written anywhere and no logging set up by a job that does run.
QUIET = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def _options(group: str) -> str:
    return ", ".join(sorted(p.stem for p in (CONF / group).glob("*.yaml")))


def _command(task=lambda cfg: None, config_name: str = "config", prog: str = "entrgi"):
    return hydra_command(config_name=config_name, prog=prog)(task)


def _call(main, argv: list[str], monkeypatch) -> int | None:
    monkeypatch.setattr(sys, "argv", ["entrgi-run", *argv])
    try:
        main()
    except SystemExit as stop:
        return stop.code
    return None


BAD = [
    (["experiment=tiny", "model.decode=nope"],
     "model.decode: Invalid value 'nope', expected one of [whole, to_stop]"),
    (["experiment=tiny", "guidance=nope"], f"guidance=nope: no such option; the options are {_options('guidance')}"),
    (["experiment=tinny"], f"experiment=tinny: no such option; the options are {_options('experiment')}"),
    (["experiment=tiny", "sampler.nope=1"], "sampler.nope: no such key; the keys of sampler (SamplerConfig) are "
                                            "num_samples, max_new_tokens, temperature, top_p, top_k, batch_size"),
    (["evaluator=[oracle,nope]"], f"evaluator=nope: no such option; the options are {_options('evaluator')}"),
    (["guidance.M=x"], "guidance.M: Value 'x' of type 'str' could not be converted to Integer"),
    (["sampler.top_p=[1"], "sampler.top_p=[1: no viable alternative at input '[1'"),
    (["-m", "experiment=tiny", "model.decode=whole,nope"],
     "model.decode: Invalid value 'nope', expected one of [whole, to_stop]"),
    (["experiment=tiny", "model.decode=nope", "--cfg", "job"],
     "model.decode: Invalid value 'nope', expected one of [whole, to_stop]"),
]


@pytest.mark.parametrize(("argv", "line"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_command_line_that_does_not_compose_is_one_line_and_exit_2(monkeypatch, capsys, argv, line):
    monkeypatch.delenv(FULL_ERROR, raising=False)
    ran = []
    assert _call(_command(ran.append), argv, monkeypatch) == 2
    assert capsys.readouterr().err.splitlines() == [f"entrgi: error: {line}"]
    assert not ran  # refused before the job
    assert FULL_ERROR not in os.environ  # put back as it was


def test_each_command_names_itself(monkeypatch, capsys):
    assert _call(_command(config_name="evaluate", prog="entrgi.evaluate"), ["logger=nope"], monkeypatch) == 2
    assert capsys.readouterr().err.startswith("entrgi.evaluate: error: logger=nope: no such option; the options are ")


def test_the_job_runs_with_the_users_setting_and_its_errors_stay_hydras(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(FULL_ERROR, raising=False)
    seen = []

    def task(cfg):
        seen.append((cfg.model.decode, os.environ.get(FULL_ERROR)))

    assert _call(_command(task), ["experiment=tiny", "model.decode=to_stop", *QUIET], monkeypatch) is None
    assert seen == [("to_stop", None)] and FULL_ERROR not in os.environ

    def failing(cfg):
        raise ConfigCompositionException("composed inside the job")  # as `entrgi.perf` composes per method

    assert _call(_command(failing), ["experiment=tiny", *QUIET], monkeypatch) == 1  # Hydra's report, not ours
    assert "entrgi: error:" not in capsys.readouterr().err


def test_a_user_asking_for_full_errors_gets_hydras_exception(monkeypatch):
    monkeypatch.setenv(FULL_ERROR, "1")
    with pytest.raises(MissingConfigException, match="guidance/nope"):
        _call(_command(), ["guidance=nope"], monkeypatch)
    assert os.environ[FULL_ERROR] == "1"


@pytest.mark.parametrize(("argv", "line"), [
    (["experiment=tiny", "perf.methods=[none,nope]"],
     f"perf.methods: guidance=nope: no such option; the options are {_options('guidance')}"),
    (["experiment=tiny", "sampler.top_p=2"], "sampler.top_p=2.0 is not allowed: expected a value in (0.0, 1.0]"),
    (["experiment=tiny", "reward=length"], "reward=length is not a reward model: entrgi.perf times the RM's forward "
                                           "and backward passes (use reward=tiny or skywork-*)"),
])
def test_perf_refuses_a_bad_method_or_value_before_loading_models(monkeypatch, capsys, tmp_path, argv, line):
    from entrgi import perf

    monkeypatch.delenv(FULL_ERROR, raising=False)
    monkeypatch.setattr(perf, "build", lambda *a, **k: pytest.fail("a model was built"))
    code = _call(perf.main, [*argv, f"hydra.run.dir={tmp_path}", "hydra/job_logging=none",
                             "hydra/hydra_logging=none"], monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"entrgi.perf: error: {line}"]
