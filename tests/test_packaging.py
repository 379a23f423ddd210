"""The installable package: configs shipped as `entrgi.conf`, users' configs beside ours, console scripts
that behave as `python -m`, and a wheel that holds every module and config (issue 13)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import CONF

REPO = Path(__file__).resolve().parents[1]
MY_GUIDANCE = """\
defaults:
  - entrgi
  - _self_

M: 5
"""
MINE = """\
# @package _global_
defaults:
  - override /guidance: my
  - _self_

seed: 7
"""


def _user_configs(folder: Path) -> Path:
    (folder / "guidance").mkdir(parents=True)
    (folder / "experiment").mkdir()
    (folder / "guidance" / "my.yaml").write_text(MY_GUIDANCE)
    (folder / "experiment" / "mine.yaml").write_text(MINE)
    return folder


def test_user_configs_compose_beside_ours(compose, tmp_path):
    """`hydra.searchpath=[file://DIR]`: a new guidance option and a new experiment, built on ours."""
    search = f"hydra.searchpath=[file://{_user_configs(tmp_path / 'my-conf')}]"
    mine = compose([search, "guidance=my"]).guidance
    assert mine.M == 5 and mine.rule == "entrgi" and mine.eta == compose([]).guidance.eta
    cfg = compose([search, "experiment=mine"])
    assert cfg.guidance.M == 5 and cfg.seed == 7 and cfg.name == "my"
    assert compose([search, "guidance=soft"]).guidance.rule == "soft"  # ours are all still there


def test_every_config_is_package_data():
    """pyproject's package-data glob for `entrgi.conf` covers every YAML file under conf/."""
    assert CONF.resolve() == (REPO / "conf").resolve()  # an editable install reads the repository's conf/
    assert sorted(CONF.rglob("*.yaml")) and all(p.suffix == ".yaml" for p in CONF.rglob("*") if p.is_file()
                                               and p.name != "__init__.py" and "__pycache__" not in p.parts)


def _script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed (pip install -e .)"
    return found


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1"}


def _both(args: list[str], module: str, script: str, cwd: Path) -> tuple[subprocess.CompletedProcess, ...]:
    run = [[sys.executable, "-m", module, *args], [_script(script), *args]]
    return tuple(subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120,
                                check=False) for command in run)


@pytest.mark.slow
def test_console_scripts_behave_as_python_m(tmp_path):
    """From an empty folder: the same composed job, the same Hydra job name, a user config dir, multirun, and
    the argparse commands; every script is declared."""
    for args in (["experiment=tiny", "--cfg", "job"], ["experiment=tiny", "--cfg", "hydra", "-p", "hydra.job.name"]):
        module, script = _both(args, "entrgi.run", "entrgi-run", tmp_path)
        assert module.returncode == script.returncode == 0, module.stderr + script.stderr
        assert module.stdout == script.stdout
    assert script.stdout.strip() == "run"
    user = ["--config-dir", str(_user_configs(tmp_path / "my-conf")), "experiment=mine", "--cfg", "job"]
    module, script = _both(user, "entrgi.run", "entrgi-run", tmp_path)
    assert module.stdout == script.stdout and "M: 5" in script.stdout and "seed: 7" in script.stdout
    sweep = ["-m", "experiment=tiny", "logger=none", "guidance=none", "schedule.steps=2", "sampler.max_new_tokens=4",
             "benchmark.n_prompts=1", "seed=1,2", "hydra/launcher=basic"]
    result = subprocess.run([_script("entrgi-run"), *sweep], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert sorted((job / "summary.json").is_file() for job in sweep_dir.iterdir() if job.is_dir()) == [True, True]
    for module_name, script in (("entrgi.report", "entrgi-report"), ("entrgi.evaluate", "entrgi-evaluate"),
                                ("entrgi.perf", "entrgi-perf"), ("entrgi.toy.train", "entrgi-train-toy")):
        module, script_result = _both(["--help"], module_name, script, tmp_path)
        assert module.returncode == script_result.returncode == 0, script_result.stderr
        assert module.stdout == script_result.stdout


@pytest.mark.slow
def test_the_wheel_holds_every_module_config_and_script(tmp_path):
    """A wheel built from a copy of the sources: every module of entrgi/, every YAML of conf/ under
    entrgi/conf/, the toy world's weights, LICENSE, the SPDX licence and the console scripts."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "multirun", "build",
                                                                "*.egg-info", "__pycache__", "wandb", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("entrgi-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "entrgi").rglob("*.py") if "__pycache__" not in p.parts}
    configs = {"entrgi/conf/" + p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    weights = {p.relative_to(REPO).as_posix() for p in (REPO / "entrgi" / "toy" / "weights").rglob("*") if p.is_file()}
    assert modules | configs | weights | {"entrgi/conf/__init__.py"} <= names
    assert {"entrgi/conf/hydra/launcher/slurm.yaml", "entrgi/conf/experiment/tiny.yaml"} <= names
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "License-Expression: Apache-2.0" in metadata and any(n.endswith("licenses/LICENSE") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode()
    for script in ("entrgi-run", "entrgi-report", "entrgi-evaluate", "entrgi-perf", "entrgi-train-toy"):
        assert f"{script} = " in entry_points
