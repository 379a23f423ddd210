"""The performance presets: `experiment=perf-vocab` (Dream's vocabulary, peaked distributions) and
`experiment=gpu-shapes` (the paper's shapes, random weights built from a config), and what `entrgi.perf`
reports about them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import Qwen2ForCausalLM

from entrgi.formats import dream_config, dream_tokenizer
from entrgi.guidance import RewardGradientGuidance
from entrgi.guidance.mix import entropy
from entrgi.models import DiffusionLM, DiffusionLMConfig
from entrgi.random_world import NOISE, SIZES, ZIPF, corpus, ensure_random_world, peak_distributions
from entrgi.rewards import RewardModel, RewardModelConfig
from entrgi.rewards.vocab_bridge import BridgedReward
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, ScheduleConfig

PROMPTS = ["Describe the cat.", "Why is the old robot happy?"]
# A CPU-sized stand-in for the paper's shapes: the network is built from these, not read from the folder.
TINY_DLLM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "vocab_size": 700}
TINY_RM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 500}


def _masked_entropies(model: DiffusionLM, prompts=PROMPTS, length: int = 16) -> torch.Tensor:
    """Entropy (nats) of the dLLM's logits at every position of a fully masked response after each prompt."""
    ids = [model.encode_prompt(p) for p in prompts]
    width = max(map(len, ids)) + length
    canvas = torch.tensor([[model.pad_token_id] * (width - length - len(p)) + p + [model.mask_token_id] * length
                           for p in ids])
    attention = torch.tensor([[0] * (width - length - len(p)) + [1] * (len(p) + length) for p in ids])
    return entropy(model.logits(canvas, attention, width - length)).flatten()


def test_presets_compose_onto_their_worlds_and_shapes(compose):
    vocab = compose(["experiment=perf-vocab"])
    assert "random_world:dllm,vocab" in vocab.model._get_node("path")._value()
    assert (vocab.sampler.num_samples * vocab.sampler.batch_size, vocab.sampler.max_new_tokens) == (16, 32)
    gpu = compose(["experiment=gpu-shapes"])
    assert gpu.model.shapes.hidden_size == 3584 and gpu.model.shapes.vocab_size == 152064
    assert gpu.reward.shapes.hidden_size == 2048 and gpu.reward.shapes.vocab_size == 151936
    assert gpu.sampler.max_new_tokens == 128 and gpu.sampler.num_samples * gpu.sampler.batch_size == 4
    eight = compose(["experiment=gpu-shapes", "reward=random-skywork-8b"])
    assert (eight.reward.shapes.hidden_size, eight.reward.shapes.num_hidden_layers) == (4096, 36)


def test_peaked_distributions_look_like_a_trained_models():
    """A random network at a 8,192-token vocabulary is close to uniform (entropy near log V); peaked, its median
    entropy is in the 0.5-4 nats of a trained instruct dLLM and the padding rows are never probable."""
    tokenizer = dream_tokenizer(corpus(200), 8000, fill=True)
    torch.manual_seed(3)
    network = Qwen2ForCausalLM(dream_config(tokenizer, SIZES["tiny"], vocab_size=8192, initializer_range=0.25))
    ids = torch.randint(0, len(tokenizer), (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = entropy(network(input_ids=ids).logits)
        peak_distributions(network, len(tokenizer), ZIPF, NOISE)
        logits = network(input_ids=ids).logits
    after = entropy(logits)
    assert before.median() > 6.0  # log 8192 = 9.0: even a wide initialisation stays close to uniform
    assert 0.5 <= after.median() <= 4.0
    assert 0.5 < after.quantile(0.9) - after.quantile(0.1)  # positions differ in how peaked they are
    assert torch.softmax(logits, -1)[..., len(tokenizer):].max() < 1e-12


@pytest.mark.slow
def test_vocab_world_has_dreams_vocabulary_and_peaked_distributions():
    """The built perf-vocab world: 152,064 rows past a 151,647-token tokenizer, an RM covering the dLLM's
    tokens, median entropy in [0.5, 4] nats; ids past the tokenizer decode to nothing and score finitely."""
    paths = ensure_random_world("vocab")
    assert "llada" not in paths
    model = DiffusionLM(DiffusionLMConfig(path=str(paths["dllm"]), tokenizer_class="Qwen2Tokenizer", device="cpu"))
    reward = RewardModel(RewardModelConfig(path=str(paths["reward"]), device="cpu"))
    assert (model.vocab_size, len(model.tokenizer)) == (152064, 151647)
    assert reward.embedding_table.shape[0] == 151936
    ent = _masked_entropies(model)
    assert 0.5 <= ent.median() <= 4.0 and (ent < 11.0).all()
    bridged = BridgedReward(model, reward)
    assert bridged.coverage > 0.999
    past = torch.tensor([[300, 151700, 152063, 400]])
    assert model.decode(past[0].tolist()) == model.decode([300, 400])
    layout = reward.layout(PROMPTS[:1], 1, 4)
    assert torch.isfinite(bridged.score_tokens(layout, past)).all()


def test_shaped_networks_are_built_from_the_config_not_the_weights(random_paths):
    """`shapes` builds the network from the folder's config with the given shapes and random weights (its
    own vocabulary rows past the tokenizer), and a guided denoising loop runs on it."""
    model = DiffusionLM(DiffusionLMConfig(path=str(random_paths["dllm"]), tokenizer_class="Qwen2Tokenizer",
                                          device="cpu", shapes=TINY_DLLM))
    reward = RewardModel(RewardModelConfig(path=str(random_paths["reward"]), device="cpu", shapes=TINY_RM))
    assert (model.network.config.hidden_size, model.vocab_size) == (32, 700) and len(model.tokenizer) < 700
    assert len(model.network.model.layers) == 1 and reward.embedding_table.shape == (500, 32)
    from entrgi.guidance import RewardGradientConfig

    guidance = RewardGradientGuidance(RewardGradientConfig(temperature=0.7, top_p=0.95, top_k=None, M=2),
                                      model=model, reward=reward)
    sampler = DiffusionSampler(SamplerConfig(num_samples=2, max_new_tokens=6), model=model,
                               schedule=EntropySchedule(ScheduleConfig(steps=3)), guidance=guidance)
    generation = sampler.generate(PROMPTS, ["a", "b"], seed=1)
    assert (generation.responses != model.mask_token_id).all()
    assert all(isinstance(model.decode(row.tolist()), str) for row in generation.responses)
    assert 0.5 <= _masked_entropies(model).median() <= 4.0  # peaked like the vocab world's


def _perf(tmp_path, *overrides: str) -> tuple[str, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "entrgi.perf", *overrides, "perf.repeats=1", "perf.warmup=0",
         "perf.operation_repeats=2", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, json.loads((tmp_path / "perf.json").read_text())


@pytest.mark.slow
def test_gpu_shapes_runs_at_cpu_size_and_reports_every_vocabulary_operation(tmp_path, random_paths):
    """The gpu-shapes preset at tiny shapes on the CPU: the split table and the per-operation table."""
    dllm = ",".join(f"{k}:{v}" for k, v in TINY_DLLM.items())
    rm = ",".join(f"{k}:{v}" for k, v in TINY_RM.items())
    stdout, report = _perf(
        tmp_path, "experiment=gpu-shapes", "perf.methods=[none,entrgi]", f"model.path={random_paths['dllm']}",
        f"reward.path={random_paths['reward']}", f"model.shapes={{{dllm}}}", f"reward.shapes={{{rm}}}",
        "schedule.steps=2", "sampler.max_new_tokens=8",
    )
    assert "| entrgi |" in stdout and "| nucleus |" in stdout and "| soft_embedding |" in stdout
    assert report["operations"]["shape"] == [4, 8, 700]
    assert set(report["operations"]["seconds_per_call"]) == {"nucleus", "softmax", "entropy", "soft_embedding",
                                                             "ranking"}
    assert all(s > 0 for s in report["operations"]["seconds_per_call"].values())
    assert report["results"]["entrgi"]["seconds_per_step"]["rm_backward"] > 0
