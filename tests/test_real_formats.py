"""The paper's model and benchmark formats, proven on tiny checkpoints and fixtures in those formats."""

from __future__ import annotations

import json

import pytest
import torch

from entrgi.components import build
from entrgi.experiment import run_experiment
from entrgi.schedule import LowConfidenceConfig, LowConfidenceSchedule
from entrgi.validation import ConfigError, validate
from entrgi.weights import WeightsUnavailable, resolve_checkpoint

REAL_MODELS = ["dream-7b", "llada-8b", "llada-1.5", "dream-coder-7b", "diffucoder-7b", "qwen3-0.6b-mdlm"]
REAL_REWARDS = ["skywork-0.6b", "skywork-1.7b", "skywork-4b", "skywork-8b"]
REAL_BENCHMARKS = ["reward-bench-2", "rm-bench", "judgebench"]
SMALL = ["logger=none", "schedule.steps=4", "sampler.max_new_tokens=8", "benchmark.n_prompts=2"]


def _real_combinations():
    """Every (model, reward, benchmark) of the real options: a diagonal that names each option at least once in the
    quick tier, the rest of the product in the slow tier."""
    for i, model in enumerate(REAL_MODELS):
        for j, reward in enumerate(REAL_REWARDS):
            for k, benchmark in enumerate(REAL_BENCHMARKS):
                quick = j == i % len(REAL_REWARDS) and k == i % len(REAL_BENCHMARKS)
                yield pytest.param(model, reward, benchmark, marks=() if quick else pytest.mark.slow)


@pytest.mark.parametrize(("model", "reward", "benchmark"), list(_real_combinations()))
def test_every_real_combination_composes_and_fails_fast_without_weights(compose, model, reward, benchmark):
    cfg = compose([f"model={model}", f"reward={reward}", f"benchmark={benchmark}"])
    validate(cfg)
    for key in ("model", "reward"):
        with pytest.raises(WeightsUnavailable, match=rf"{key}\.path=.*experiment=tiny"):
            resolve_checkpoint(cfg[key].path, f"{key}.path")


def test_paper_settings_resolve(compose):
    cfg = compose(["model=dream-7b", "reward=skywork-4b", "benchmark=judgebench"])
    assert cfg.model.path == "Dream-org/Dream-v0-Instruct-7B" and cfg.model.mask_token_id == 151666
    assert cfg.model.eos_token_id == 151643 and cfg.model.logit_shift
    assert cfg.reward.path == "Skywork/Skywork-Reward-V2-Qwen3-4B"
    assert (cfg.benchmark.path, cfg.benchmark.split, cfg.benchmark.prompt_field, cfg.benchmark.category_field) == (
        "ScalerLab/JudgeBench", "gpt", "question", "source")
    assert (cfg.guidance.rule, cfg.guidance.M, cfg.guidance.eta) == ("entrgi", 3, 0.5)
    assert (cfg.sampler.num_samples, cfg.schedule.steps, cfg.sampler.max_new_tokens) == (4, 128, 128)
    llada = compose(["model=llada-8b"]).model
    assert (llada.mask_token_id, llada.eos_token_id, llada.logit_shift) == (126336, 126081, False)


def test_llada_checkpoint_is_in_llada_format(random_paths):
    from safetensors.torch import load_file

    folder = random_paths["llada"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llada" and {"d_model", "n_layers", "mlp_hidden_size"} <= config.keys()
    names = load_file(folder / "model.safetensors").keys()
    assert "model.transformer.wte.weight" in names and "model.transformer.blocks.0.attn_out.weight" in names


def test_llada_logits_equal_a_bidirectional_llama_forward(compose, random_paths):
    """Renamed weights land where they belong: our logits == a plain Llama forward with a full mask, no shift."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = build(compose(["model=random-llada"]).model)
    raw = json.loads((random_paths["llada"] / "config.json").read_text())
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["d_model"], intermediate_size=raw["mlp_hidden_size"],
        num_hidden_layers=raw["n_layers"], num_attention_heads=raw["n_heads"], num_key_value_heads=raw["n_kv_heads"],
        rope_theta=raw["rope_theta"], rms_norm_eps=raw["rms_norm_eps"], tie_word_embeddings=False,
        attn_implementation="eager",
    )).eval()
    mapped = {name: tensor for name, tensor in model.network.state_dict().items()}
    llama.load_state_dict(mapped)
    # Reference: eager attention with an explicit all-zero additive mask (every query sees every key).
    canvas = torch.tensor([model.encode_prompt("Describe the cat.") + [model.mask_token_id] * 5])
    full = torch.zeros(1, 1, canvas.shape[1], canvas.shape[1])
    expected = llama(input_ids=canvas, attention_mask=full).logits
    ours = model.logits(canvas, torch.ones_like(canvas, dtype=torch.bool), start=0)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    # And the mapping used every tensor: the checkpoint's weights, not a random init.
    from safetensors.torch import load_file

    stored = load_file(random_paths["llada"] / "model.safetensors")
    assert torch.equal(mapped["lm_head.weight"], stored["model.transformer.ff_out.weight"])
    down = stored["model.transformer.blocks.1.ff_out.weight"]
    assert torch.equal(mapped["model.layers.1.mlp.down_proj.weight"], down)


def test_a_checkpoint_that_does_not_fit_the_mapping_is_refused(compose):
    cfg = compose(["model=random-llada", "model.backbone=Qwen2ForCausalLM"])  # Qwen2 has q/k/v biases LLaDA lacks
    with pytest.raises(ValueError, match="weights unmatched"):
        build(cfg.model)


@pytest.mark.parametrize("model,schedule", [("tiny", "entropy"), ("random-llada", "low_confidence")])
def test_guided_job_on_each_model_family(compose, tmp_path, model, schedule):
    cfg = compose(["experiment=tiny", f"model={model}", f"schedule={schedule}", "guidance=entrgi", *SMALL]
                  + (["schedule.block_length=4"] if schedule == "low_confidence" else []))
    summary = run_experiment(cfg, tmp_path)
    assert summary["n_prompts"] == 2 and 0 < summary["vocab_coverage"] < 1
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(len(json.loads(line)["responses"]) == 4 for line in lines)


class TestLowConfidenceBlocks:
    def _masks(self, steps=4, length=8, block=4):
        schedule = LowConfidenceSchedule(LowConfidenceConfig(steps=steps, block_length=block, deprioritize_eos=False))
        schedule.check_length(length)
        masked = torch.ones(1, length, dtype=torch.bool)
        probs = torch.softmax(torch.randn(1, length, 5, generator=torch.Generator().manual_seed(0)), -1)
        tokens = probs.argmax(-1)
        history = []
        for step in range(steps):
            commit = schedule.commit_mask(masked, tokens, probs, step, None, eos_token_id=-1)
            history.append(commit[0].nonzero().flatten().tolist())
            masked = masked & ~commit
        return history, probs.max(-1).values[0]

    def test_blocks_fill_left_to_right_with_even_counts(self):
        history, confidence = self._masks()
        assert [len(h) for h in history] == [2, 2, 2, 2]
        assert sorted(history[0] + history[1]) == [0, 1, 2, 3] and sorted(history[2] + history[3]) == [4, 5, 6, 7]
        first_block = confidence[:4]
        assert sorted(history[0]) == sorted(first_block.topk(2).indices.tolist())  # most probable first

    def test_remainder_goes_to_the_first_steps(self):
        history, _ = self._masks(steps=3, length=8, block=8)  # one block, 8 tokens over 3 steps
        assert [len(h) for h in history] == [3, 3, 2]

    @pytest.mark.parametrize("steps,length,block,match", [(4, 8, 3, "block_length=3"), (3, 8, 4, "steps=3")])
    def test_incompatible_sizes_are_config_errors(self, steps, length, block, match):
        with pytest.raises(ConfigError, match=match):
            LowConfidenceSchedule(LowConfidenceConfig(steps=steps, block_length=block)).check_length(length)


REAL_FIELDS = {  # benchmark option → one row with the real dataset's columns
    "reward-bench-2": {"id": "rb2-7", "prompt": "Name a prime.", "chosen": ["2"], "rejected": ["4"], "subset": "Math",
                       "num_correct": 1},
    "rm-bench": {"id": 11, "prompt": "Say hi.", "chosen": ["hi"] * 3, "rejected": ["no"] * 3, "domain": "chat"},
    "judgebench": {"pair_id": "jb-3", "original_id": "o", "source": "mmlu-pro", "question": "What is 2+2?",
                   "response_model": "gpt", "response_A": "4", "response_B": "5", "label": "A>B"},
}


@pytest.mark.parametrize("benchmark", REAL_BENCHMARKS)
def test_real_benchmarks_read_local_copies_with_their_fields(compose, tmp_path, benchmark):
    row = REAL_FIELDS[benchmark]
    other = {k: (f"{v} again" if isinstance(v, str) else v) for k, v in row.items()}
    other[next(k for k in row if "id" in k)] = "second"
    path = tmp_path / f"{benchmark}.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(other) + "\n" + json.dumps(row) + "\n")  # last: duplicate
    prompts = build(compose([f"benchmark={benchmark}", f"benchmark.path={path}"]).benchmark).prompts()
    text_field = "question" if benchmark == "judgebench" else "prompt"
    id_field = "pair_id" if benchmark == "judgebench" else "id"
    category_field = {"reward-bench-2": "subset", "rm-bench": "domain", "judgebench": "source"}[benchmark]
    assert [p.text for p in prompts] == [row[text_field], other[text_field]]
    assert [p.id for p in prompts] == [str(row[id_field]), "second"]
    assert prompts[0].category == str(row[category_field])


def test_peft_adapter_is_merged_into_the_reward_model(random_paths, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from entrgi.rewards import RewardModel, RewardModelConfig

    base = AutoModelForSequenceClassification.from_pretrained(random_paths["reward"], num_labels=1)
    peft_model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    peft_model.save_pretrained(tmp_path / "adapter")
    prompts, responses = ["Describe the cat."], ["The cat is small."]
    plain = RewardModel(RewardModelConfig(path=str(random_paths["reward"]), device="cpu")).score_texts(prompts,
            responses)
    adapted = RewardModel(RewardModelConfig(path=str(random_paths["reward"]),
            adapter_path=str(tmp_path / "adapter"), device="cpu"))
    scores = adapted.score_texts(prompts, responses)
    assert not torch.allclose(scores, plain)
    peft_model.eval()
    with torch.no_grad():
        batch = adapted.tokenizer([adapted.render(prompts[0], responses[0])], return_tensors="pt",
                                  add_special_tokens=False)
        torch.testing.assert_close(scores, peft_model(**batch).logits[:, 0], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_scores_and_gradients(random_paths):
    from entrgi.rewards import RewardModel, RewardModelConfig

    results = []
    for checkpointing in (False, True):
        reward = RewardModel(RewardModelConfig(path=str(random_paths["reward"]),
                gradient_checkpointing=checkpointing, device="cpu"))
        ids = reward.tokenizer(["The cat is small."], add_special_tokens=False)["input_ids"]
        embeds = reward.embedding_table[torch.tensor(ids)].detach().clone().requires_grad_(True)
        score = reward.score_embeds(reward.layout(["Describe the cat."], 1, len(ids[0])), embeds,
                                    torch.ones(1, len(ids[0]), dtype=torch.bool))
        score.sum().backward()
        results.append((score.detach(), embeds.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_qwen3_template_split_matches_the_text_path(random_reward):
    """The think block the template adds before the answer sits in the prefix, so both paths agree."""
    prefix, suffix = random_reward.template_parts("Describe the cat.")
    rendered = random_reward.render("Describe the cat.", "The cat is small.")
    assert random_reward.tokenizer.decode(prefix).endswith("<think>\n\n</think>\n\n")
    ids = random_reward.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    response = random_reward.tokenizer("The cat is small.", add_special_tokens=False)["input_ids"]
    assert ids == prefix + response + suffix
