"""Shared fixtures: offline environment, the random (untrained) world built once per session, the shipped
toy world, composed configs."""

from __future__ import annotations

import contextlib
import logging
import os
from importlib.resources import files
from pathlib import Path

import pytest

# Set before transformers / datasets / wandb read them: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The configs as the commands read them (`pkg://entrgi.conf`): the repository's conf/ in an editable install.
CONF_MODULE = "entrgi.conf"
CONF = Path(str(files(CONF_MODULE)))


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


def guidance_config(**options):
    """A RewardGradientConfig built in Python: τ, top-p and top-k as the sampler's defaults (no run config to read)."""
    from entrgi.guidance import RewardGradientConfig

    return RewardGradientConfig(**{"temperature": 0.7, "top_p": 0.95, "top_k": None, **options})


@contextlib.contextmanager
def nan_from_call(owner, name: str, first: int):
    """`owner.name` (a method, patched on an instance or a class) returns its output times NaN from its
    `first`-th call (0-based) on; autograd goes through, so NaN scores give NaN gradients."""
    saved = vars(owner).get(name)
    original = getattr(owner, name)
    calls = []

    def patched(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(None)
        return out * float("nan") if len(calls) > first else out

    setattr(owner, name, patched)
    try:
        yield
    finally:
        if saved is None:
            delattr(owner, name)
        else:
            setattr(owner, name, saved)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped, with the reason, where there is none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

def pytest_sessionfinish(session, exitstatus):
    """A run that collected no test is a failure for CI, not a success."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def entrgi_cache(tmp_path_factory) -> Path:
    """Build the random world (and the tiny judges) into a fresh cache once per test session."""
    cache = tmp_path_factory.mktemp("entrgi-cache")
    os.environ["ENTRGI_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def root_log_handlers():
    """Put the root logger's handlers back after each test: a command run in-process gets Hydra's logging
    set up on the stderr of that test's capture, which is closed once the test ends."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def random_paths(entrgi_cache) -> dict[str, Path]:
    from entrgi.random_world import ensure_random_world

    return ensure_random_world()


@pytest.fixture(scope="session")
def compose():
    """compose(overrides) -> the composed run config, exactly as `python -m entrgi.run` builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import entrgi.config  # noqa: F401

    def _compose(overrides: list[str] | tuple[str, ...] = ()):
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    return _compose


@pytest.fixture(scope="session")
def random_model(random_paths):
    from entrgi.models import DiffusionLM, DiffusionLMConfig

    return DiffusionLM(DiffusionLMConfig(path=str(random_paths["dllm"]), tokenizer_class="Qwen2Tokenizer",
            device="cpu"))


@pytest.fixture(scope="session")
def random_reward(random_paths):
    from entrgi.rewards import RewardModel, RewardModelConfig

    return RewardModel(RewardModelConfig(path=str(random_paths["reward"]), device="cpu"))


@pytest.fixture(scope="session")
def tiny_judges(entrgi_cache) -> dict[str, Path]:
    """The offline tiny LMUnit-format judge and the held-out tiny RM (entrgi.evaluators.tiny)."""
    from entrgi.evaluators.tiny import ensure_tiny_judges

    return ensure_tiny_judges()


@pytest.fixture(scope="session")
def toy_model():
    """The trained toy dLLM that experiment=tiny uses (shipped in the package)."""
    from entrgi.models import DiffusionLM, DiffusionLMConfig
    from entrgi.toy.world import toy_world_path

    return DiffusionLM(DiffusionLMConfig(path=str(toy_world_path("dllm")), tokenizer_class="Qwen2Tokenizer",
            device="cpu"))


@pytest.fixture(scope="session")
def toy_reward():
    """The trained toy RM that experiment=tiny uses."""
    from entrgi.rewards import RewardModel, RewardModelConfig
    from entrgi.toy.world import toy_world_path

    return RewardModel(RewardModelConfig(path=str(toy_world_path("reward")), device="cpu"))


@pytest.fixture
def one_thread():
    """Tiny jobs run side by side on few cores: one thread each, or they slow each other down manyfold."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
