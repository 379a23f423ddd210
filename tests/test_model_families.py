"""The dLLM families beyond Dream-7B and LLaDA-8B (issue 18): LLaDA-1.5, Dream-Coder, DiffuCoder, dllm's
Qwen3 AR-to-diffusion MDLM and `model=hf`, each on a tiny checkpoint written in its real on-disk format.

The forward is re-stated here in plain torch from the families' own modeling code (Qwen2 with q/k/v
biases for Dream/DiffuCoder, `modeling_dream.py`; Qwen3 with per-head q/k RMSNorm and tied embeddings
for dllm's `A2DQwen3LMHeadModel`; LLaDA's `LLaDALlamaBlock` under its OLMo names, `modeling_llada.py`):
RMSNorm, rotate-half RoPE at positions counting real tokens, grouped-query attention over every
unpadded key (no causal mask), SwiGLU, the LM head, and Dream's shift by one. It reads the weights
straight from the safetensors file under the checkpoint's own names, so neither transformers' classes
nor `model.weight_keys` take part in the reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from entrgi.benchmarks import Prompt
from entrgi.components import build
from entrgi.experiment import run_experiment
from entrgi.preflight import check_inputs
from entrgi.validation import ConfigError

SMALL = ["logger=none", "schedule.steps=4", "sampler.max_new_tokens=8", "benchmark.n_prompts=2"]
FROM_CHECKPOINT = ["model.mask_token_id=null", "model.eos_token_id=null", "model.device=cpu"]
# option -> (random-world folder, family of the re-stated forward)
FAMILIES = {
    "dream-coder-7b": ("dllm", "qwen2"),
    "diffucoder-7b": ("diffucoder", "qwen2"),
    "llada-1.5": ("llada", "llada"),
    "qwen3-0.6b-mdlm": ("a2d", "qwen3"),
}
HF = ["model=hf", "model.backbone=Qwen3ForCausalLM", "model.logit_shift=false"]
# Weight names of each family's own checkpoints ({i}: the layer).
QWEN_NAMES = {
    "embed": "model.embed_tokens.weight", "head": "lm_head.weight", "norm": "model.norm.weight",
    "attn_norm": "model.layers.{i}.input_layernorm.weight", "q": "model.layers.{i}.self_attn.q_proj",
    "k": "model.layers.{i}.self_attn.k_proj", "v": "model.layers.{i}.self_attn.v_proj",
    "o": "model.layers.{i}.self_attn.o_proj", "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
    "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight", "gate": "model.layers.{i}.mlp.gate_proj",
    "up": "model.layers.{i}.mlp.up_proj", "down": "model.layers.{i}.mlp.down_proj",
}
LLADA_NAMES = {
    "embed": "model.transformer.wte.weight", "head": "model.transformer.ff_out.weight",
    "norm": "model.transformer.ln_f.weight", "attn_norm": "model.transformer.blocks.{i}.attn_norm.weight",
    "q": "model.transformer.blocks.{i}.q_proj", "k": "model.transformer.blocks.{i}.k_proj",
    "v": "model.transformer.blocks.{i}.v_proj", "o": "model.transformer.blocks.{i}.attn_out",
    "mlp_norm": "model.transformer.blocks.{i}.ff_norm.weight", "gate": "model.transformer.blocks.{i}.ff_proj",
    "up": "model.transformer.blocks.{i}.up_proj", "down": "model.transformer.blocks.{i}.ff_out",
}


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x [N, H, S, D] rotated by rotate-half RoPE at positions [N, S]."""
    dim = x.shape[-1]
    angles = positions[..., None].double() / theta ** (torch.arange(0, dim, 2).double() / dim)
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None].float(), torch.cat([angles.sin()] * 2, -1)[:, None].float()
    rotated = torch.cat([-x[..., dim // 2:], x[..., : dim // 2]], -1)
    return x * cos + rotated * sin


def restated_logits(folder: Path, family: str, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The family's forward [N, S, V] over token ids [N, S] with key-padding mask `keep` [N, S], unshifted."""
    raw = json.loads((folder / "config.json").read_text())
    w = load_file(folder / "model.safetensors")
    if family == "llada":
        names, hidden, heads, kv_heads = LLADA_NAMES, raw["d_model"], raw["n_heads"], raw["n_kv_heads"]
        layers, theta = raw["n_layers"], raw["rope_theta"]
    else:
        names, hidden, heads, kv_heads = QWEN_NAMES, raw["hidden_size"], raw["num_attention_heads"], \
            raw["num_key_value_heads"]
        layers = raw["num_hidden_layers"]
        theta = raw.get("rope_theta") or raw["rope_parameters"]["rope_theta"]
    head_dim, eps = raw.get("head_dim") or hidden // heads, raw["rms_norm_eps"]

    def linear(x, name, i):
        bias = w.get(names[name].format(i=i) + ".bias")  # Qwen2 (Dream) has q/k/v biases, Qwen3 and LLaDA none
        out = x @ w[names[name].format(i=i) + ".weight"].T
        return out if bias is None else out + bias

    n, s = ids.shape
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    blocked = torch.zeros(n, 1, 1, s).masked_fill(~keep[:, None, None, :], float("-inf"))
    h = w[names["embed"]][ids]
    for i in range(layers):
        a = _rms(h, w[names["attn_norm"].format(i=i)], eps)
        q = linear(a, "q", i).view(n, s, heads, head_dim)
        k = linear(a, "k", i).view(n, s, kv_heads, head_dim)
        v = linear(a, "v", i).view(n, s, kv_heads, head_dim).transpose(1, 2)
        if family == "qwen3":  # Qwen3: RMSNorm over each head's query and key before RoPE
            q, k = _rms(q, w[names["q_norm"].format(i=i)], eps), _rms(k, w[names["k_norm"].format(i=i)], eps)
        q, k = _rope(q.transpose(1, 2), positions, theta), _rope(k.transpose(1, 2), positions, theta)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5 + blocked, -1)
        h = h + linear((attention @ v).transpose(1, 2).reshape(n, s, heads * head_dim), "o", i)
        m = _rms(h, w[names["mlp_norm"].format(i=i)], eps)
        h = h + linear(torch.nn.functional.silu(linear(m, "gate", i)) * linear(m, "up", i), "down", i)
    head = w.get(names["head"], w[names["embed"]])  # Qwen3-0.6B ties the LM head to the embedding
    return _rms(h, w[names["norm"]], eps) @ head.T


def _model(compose, random_paths, option: str, *extra: str):
    folder = random_paths[FAMILIES[option][0]] if option in FAMILIES else random_paths["a2d"]
    return build(compose([f"model={option}", f"model.path={folder}", *FROM_CHECKPOINT, *extra]).model), folder


@pytest.mark.parametrize("option", [*FAMILIES, "hf"])
def test_logits_equal_the_restated_forward_of_the_family(compose, random_paths, option):
    """Two left-padded prompts: our logits at every real position == the family's own forward (shifted by
    one for the Dream family), so renames, biases, q/k norms, tied heads and the bidirectional mask all hold."""
    model, folder = _model(compose, random_paths, option, *(HF[1:] if option == "hf" else []))
    family = FAMILIES.get(option, ("a2d", "qwen3"))[1]
    short, long = model.encode_prompt("Hi"), model.encode_prompt("Describe the quiet cat, please.")
    masks = [model.mask_token_id] * 5
    pad = len(long) - len(short)
    ids = torch.tensor([[model.pad_token_id] * pad + short + masks, long + masks])
    keep = torch.tensor([[False] * pad + [True] * (len(short) + 5), [True] * (len(long) + 5)])
    expected = restated_logits(folder, family, ids, keep)
    if family == "qwen2":  # Dream: position j reads the output at j - 1
        expected = torch.cat([expected[:, :1], expected[:, :-1]], 1)
        assert model.logit_shift
    else:
        assert not model.logit_shift
    ours = model.logits(ids, keep, start=0)
    torch.testing.assert_close(ours[keep], expected[keep], atol=1e-4, rtol=1e-4)
    assert ours.shape[-1] == model.vocab_size and not torch.allclose(ours[0, -1], ours[0, -2], atol=1e-3)


def test_the_tiny_checkpoints_are_in_their_real_formats(random_paths):
    """dllm's A2D: Qwen3 names, model type a2d-qwen3, the head tied (not stored), <|mask|> after Qwen3's
    tokens; DiffuCoder: Dream's format with <|dlm_pad|> right after <|mask|>."""
    a2d = json.loads((random_paths["a2d"] / "config.json").read_text())
    assert (a2d["model_type"], a2d["architectures"], a2d["tie_word_embeddings"]) == (
        "a2d-qwen3", ["A2DQwen3LMHeadModel"], True)
    assert "auto_map" not in a2d
    names = load_file(random_paths["a2d"] / "model.safetensors").keys()
    assert "model.layers.0.self_attn.q_norm.weight" in names and "lm_head.weight" not in names
    tokens = json.loads((random_paths["a2d"] / "tokenizer.json").read_text())["added_tokens"]
    assert [t["content"] for t in tokens][-3:] == ["<think>", "</think>", "<|mask|>"]
    coder = json.loads((random_paths["diffucoder"] / "config.json").read_text())
    specials = json.loads((random_paths["diffucoder"] / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    by_name = {t["content"]: int(i) for i, t in specials.items()}
    assert coder["model_type"] == "Dream" and by_name["<|dlm_pad|>"] == coder["mask_token_id"] + 1


def test_real_settings_of_each_option(compose):
    """The ids and flags each option's YAML states (sources in the YAML comments and the README)."""
    llada15 = compose(["model=llada-1.5"]).model
    assert (llada15.path, llada15.mask_token_id, llada15.eos_token_id, llada15.logit_shift) == (
        "GSAI-ML/LLaDA-1.5", 126336, 126081, False)
    assert llada15.weight_keys == compose(["model=llada-8b"]).model.weight_keys
    for option, path in (("dream-coder-7b", "Dream-org/Dream-Coder-v0-Instruct-7B"),
                         ("diffucoder-7b", "apple/DiffuCoder-7B-cpGRPO")):
        cfg = compose([f"model={option}"]).model
        assert (cfg.path, cfg.backbone, cfg.mask_token_id, cfg.eos_token_id, cfg.logit_shift) == (
            path, "Qwen2ForCausalLM", 151666, 151643, True)
    assert compose(["model=diffucoder-7b"]).model.stop_tokens == ["<|im_end|>", "<|dlm_pad|>"]
    qwen3 = compose(["model=qwen3-0.6b-mdlm"]).model
    assert (qwen3.path, qwen3.backbone, qwen3.mask_token_id, qwen3.eos_token_id, qwen3.logit_shift) == (
        "dllm-hub/Qwen3-0.6B-diffusion-mdlm-v0.1", "Qwen3ForCausalLM", 151669, 151643, False)
    assert qwen3.chat_template_kwargs == {"enable_thinking": False}


def test_qwen3_prompts_close_an_empty_think_block(compose, random_paths):
    """dllm chats with enable_thinking=False: the generation prompt ends in an empty think block."""
    model, _ = _model(compose, random_paths, "qwen3-0.6b-mdlm")
    text = model.tokenizer.decode(model.encode_prompt("Hi there"))
    assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert model.mask_token_id == model.tokenizer.convert_tokens_to_ids("<|mask|>")
    assert model.stop_token_ids == sorted({model.eos_token_id, model.tokenizer.convert_tokens_to_ids("<|im_end|>")})


@pytest.mark.parametrize("option", [*FAMILIES, "hf"])
def test_guided_tiny_job_through_from_pretrained(compose, tmp_path, random_paths, one_thread, option):
    """EntRGi with the toy RM, every new option on its tiny real-format checkpoint, offline on the CPU."""
    folder = random_paths[FAMILIES.get(option, ("a2d",))[0]]
    blocks = ["schedule=low_confidence", "schedule.block_length=4"] if option in ("llada-1.5", "qwen3-0.6b-mdlm") \
        else []
    cfg = compose(["experiment=tiny", f"model={option}", f"model.path={folder}", *FROM_CHECKPOINT,
                   *(HF[1:] if option == "hf" else []), "guidance=entrgi", *blocks, *SMALL])
    summary = run_experiment(cfg, tmp_path)
    assert summary["n_prompts"] == 2 and 0 < summary["vocab_coverage"] < 1
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(len(json.loads(line)["responses"]) == 4 for line in lines)


def test_a_chat_template_given_in_the_config_replaces_the_checkpoints(compose, random_paths):
    """model.chat_template (for a checkpoint without one): used by the model and by the pre-load context check."""
    cfg = compose(["experiment=tiny", "evaluator=[]", *HF, f"model.path={random_paths['a2d']}",
                   "sampler.max_new_tokens=8"])
    prompt = Prompt(id="p", text="the cat sees the dog")
    assert check_inputs(cfg, [prompt]) == [prompt]
    cfg.model.chat_template = "{{- 'Q: ' + messages[0].content + '\\nA:' }}"
    model = build(cfg.model)
    assert model.tokenizer.decode(model.encode_prompt("Hi there")) == "Q: Hi there\nA:"
    cfg.model.chat_template = "{{- (messages[0].content + ' ') * 300 }}"  # over the 1,024 positions
    with pytest.raises(ConfigError, match=r"prompt 'p' needs \d+ positions in the dLLM"):
        check_inputs(cfg, [prompt])


def _without_mask(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    tok = json.loads((target / "tokenizer_config.json").read_text())
    tok.pop("mask_token", None)
    (target / "tokenizer_config.json").write_text(json.dumps(tok))
    return target


def test_model_hf_without_a_mask_token_is_refused_before_loading(compose, random_paths, tmp_path, monkeypatch):
    folder = _without_mask(random_paths["a2d"], tmp_path / "no-mask")
    cfg = compose(["experiment=tiny", *HF, f"model.path={folder}"])
    loaded = []
    monkeypatch.setattr("transformers.Qwen3ForCausalLM.from_pretrained", lambda *a, **k: loaded.append(a))
    with pytest.raises(ConfigError, match=r"model\.mask_token_id is not set and model\.path=.*defines no mask token"):
        check_inputs(cfg, build(cfg.benchmark).slice())
    assert not loaded
    prompts = build(cfg.benchmark).slice()
    fixed = compose(["experiment=tiny", *HF, f"model.path={folder}", "model.mask_token_id=5"])
    assert check_inputs(fixed, prompts) == prompts


@pytest.mark.parametrize(("overrides", "match"), [
    (["model.backbone=Qwen3Model"], r"model\.backbone='Qwen3Model' is not a transformers causal-LM class"),
    (["model.stop_tokens=['<|eot_id|>']"], r"model\.stop_tokens: \['<\|eot_id\|>'\] not in the tokenizer"),
    (["model.eos_token_id=100000"], r"model\.eos_token_id=100000 is outside the vocabulary"),
])
def test_model_hf_settings_that_do_not_fit_the_checkpoint(compose, random_paths, overrides, match):
    cfg = compose(["experiment=tiny", *HF, f"model.path={random_paths['a2d']}", *overrides])
    with pytest.raises(ConfigError, match=match):
        check_inputs(cfg, build(cfg.benchmark).slice())


def test_model_hf_names_its_unset_keys(compose):
    from entrgi.preflight import check_job

    with pytest.raises(ConfigError, match=r"model\.backbone is not set"):
        check_job(compose(["model=hf"]))
    with pytest.raises(ConfigError, match=r"model\.logit_shift is not set"):
        check_job(compose(["model=hf", "model.backbone=Qwen3ForCausalLM", "model.path=x"]))


def test_experiment_qwen3_composes_and_needs_its_weights(compose):
    from entrgi.validation import validate
    from entrgi.weights import WeightsUnavailable, resolve_checkpoint

    cfg = compose(["experiment=qwen3-0.6b"])
    validate(cfg)
    assert cfg.model.path == "dllm-hub/Qwen3-0.6B-diffusion-mdlm-v0.1"
    assert cfg.reward.path == "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
    for key in ("model", "reward"):
        with pytest.raises(WeightsUnavailable, match=rf"{key}\.path=.*experiment=tiny"):
            resolve_checkpoint(cfg[key].path, f"{key}.path")
