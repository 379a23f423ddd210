"""Shared fixtures: offline environment, the random tiny world built once per session, the shipped
toy world, composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before transformers / datasets / wandb read them: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def expected_commit_counts(n_masked: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Dream's arithmetic, restated: the grid is float32 torch.linspace(1, eps, T+1), the count
    floor(n·(1 − s/t)) is taken in double from those float32 values; the rest at the end."""
    import math

    import torch

    grid = torch.linspace(1.0, eps, steps + 1, dtype=torch.float32).tolist()
    counts = []
    for i in range(steps):
        n = n_masked if i == steps - 1 else math.floor(n_masked * (1.0 - grid[i + 1] / grid[i]))
        counts.append(n)
        n_masked -= n
    return counts


def pytest_sessionfinish(session, exitstatus):
    """A run that collected no test is a failure for CI, not a success."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory) -> Path:
    """Build the tiny world into a fresh cache once per test session."""
    cache = tmp_path_factory.mktemp("entrgi-cache")
    os.environ["ENTRGI_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_paths(tiny_cache) -> dict[str, Path]:
    from entrgi.tiny_world import ensure_tiny_world

    return ensure_tiny_world()


@pytest.fixture(scope="session")
def compose():
    """compose(overrides) -> the composed run config, exactly as `python -m entrgi.run` builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import entrgi.config  # noqa: F401

    def _compose(overrides: list[str] | tuple[str, ...] = ()):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    return _compose


@pytest.fixture(scope="session")
def tiny_model(tiny_paths):
    from entrgi.models import DiffusionLM

    return DiffusionLM(str(tiny_paths["dllm"]), tokenizer_class="Qwen2Tokenizer", device="cpu")


@pytest.fixture(scope="session")
def tiny_reward(tiny_paths):
    from entrgi.rewards import RewardModel

    return RewardModel(str(tiny_paths["reward"]), device="cpu")


@pytest.fixture(scope="session")
def tiny_judges(tiny_cache) -> dict[str, Path]:
    """The offline tiny LMUnit-format judge and the held-out tiny RM (entrgi.evaluators.tiny)."""
    from entrgi.evaluators.tiny import ensure_tiny_judges

    return ensure_tiny_judges()


@pytest.fixture(scope="session")
def toy_model():
    """The trained toy dLLM that experiment=tiny uses (shipped in the package)."""
    from entrgi.models import DiffusionLM
    from entrgi.toy.world import toy_world_path

    return DiffusionLM(str(toy_world_path("dllm")), tokenizer_class="Qwen2Tokenizer", device="cpu")


@pytest.fixture(scope="session")
def toy_reward():
    """The trained toy RM that experiment=tiny uses."""
    from entrgi.rewards import RewardModel
    from entrgi.toy.world import toy_world_path

    return RewardModel(str(toy_world_path("reward")), device="cpu")


@pytest.fixture
def one_thread():
    """Tiny jobs run side by side on few cores: one thread each, or they slow each other down manyfold."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
