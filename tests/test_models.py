"""The tiny Dream-format dLLM and the DiffusionLM wrapper (SPEC §2 step 1), and missing weights."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import constants

from entrgi.models import DiffusionLM, DiffusionLMConfig
from entrgi.random_world import ensure_random_world
from entrgi.weights import WeightsUnavailable, resolve_checkpoint

PROMPT = "Describe the small cat."


def _canvas(model: DiffusionLM, prompt: str = PROMPT, n_masks: int = 6) -> torch.Tensor:
    return torch.tensor([model.encode_prompt(prompt) + [model.mask_token_id] * n_masks])


# ----------------------------------------------------------------------------- the random world


def test_random_dllm_is_in_dream_format(random_paths):
    """config.json as Dream ships it: remote-code model_type, auto_map and the mask id."""
    raw = json.loads((random_paths["dllm"] / "config.json").read_text())
    assert raw["model_type"] == "Dream"
    assert "AutoModel" in raw["auto_map"]
    assert isinstance(raw["mask_token_id"], int)


def test_mask_and_special_ids_come_from_the_checkpoint(random_model, random_paths):
    raw = json.loads((random_paths["dllm"] / "config.json").read_text())
    tok = random_model.tokenizer
    assert random_model.mask_token_id == raw["mask_token_id"] == tok.convert_tokens_to_ids("<|mask|>")
    assert random_model.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert random_model.pad_token_id == random_model.eos_token_id  # pad = eos, as in Dream
    assert random_model.vocab_size == len(tok)


def test_the_two_random_vocabularies_differ(random_model, random_reward):
    """The dLLM and the RM have their own tokenizers, as Dream and Qwen3 do."""
    dllm_vocab, rm_vocab = random_model.tokenizer.get_vocab(), random_reward.tokenizer.get_vocab()
    assert len(dllm_vocab) != len(rm_vocab)
    shared = set(dllm_vocab) & set(rm_vocab)
    assert any(dllm_vocab[t] != rm_vocab[t] for t in shared)


def test_random_world_build_is_deterministic(random_paths, tmp_path):
    """A fresh build writes byte-identical files, so every machine has the same random models."""
    fresh = ensure_random_world(root=tmp_path)
    assert fresh.keys() == random_paths.keys()
    for part in random_paths:
        names = sorted(p.name for p in random_paths[part].iterdir())
        assert names == sorted(p.name for p in fresh[part].iterdir())
        for name in names:
            assert (fresh[part] / name).read_bytes() == (random_paths[part] / name).read_bytes(), f"{part}/{name}"


def test_prompt_uses_the_chat_template(random_model):
    text = random_model.tokenizer.decode(random_model.encode_prompt("Hi there"))
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_decode_whole_or_to_the_first_stop_token(random_model, monkeypatch):
    """model.decode=whole (the authors' script): special tokens skipped, text after them kept;
    to_stop (fidelity=consistent): cut at the first stop token, EOS or <|im_end|>."""
    tok = random_model.tokenizer
    before = tok("The cat sees the dog.", add_special_tokens=False)["input_ids"]
    after = tok(" It is warm.", add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = before + [random_model.eos_token_id] + after + [random_model.mask_token_id]
    assert random_model.config.decode == "whole"
    assert random_model.decode(ids) == "The cat sees the dog. It is warm."
    assert random_model.decode(before + [im_end] + after) == "The cat sees the dog. It is warm."
    monkeypatch.setattr(random_model, "stop_token_ids", sorted({random_model.eos_token_id, im_end}))  # as model=tiny
    monkeypatch.setattr(random_model.config, "decode", "to_stop")
    assert random_model.decode(ids) == "The cat sees the dog."
    assert random_model.decode(before + [im_end] + after) == "The cat sees the dog."
    assert random_model.decode(before) == "The cat sees the dog."


# ----------------------------------------------------------------------------- logits


def test_logits_shape_and_dtype(random_model):
    canvas = _canvas(random_model)
    start = canvas.shape[1] - 6
    logits = random_model.logits(canvas, torch.ones_like(canvas, dtype=torch.bool), start)
    assert logits.shape == (1, 6, random_model.vocab_size)
    assert logits.dtype == torch.float32


def test_logits_are_shifted_by_one_against_the_raw_backbone(random_model):
    """Dream: position j's logits are the backbone's output at j − 1; position 0 keeps its own."""
    canvas = _canvas(random_model)
    full = torch.ones_like(canvas, dtype=torch.bool)
    # The backbone run directly, bidirectional (no mask + is_causal off = full attention).
    raw = random_model.network(input_ids=canvas, attention_mask={"full_attention": None}).logits.float()
    shifted = random_model.logits(canvas, full, 0)
    torch.testing.assert_close(shifted[:, 1:], raw[:, :-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted[:, 0], raw[:, 0], atol=1e-5, rtol=1e-5)
    start = canvas.shape[1] - 6
    torch.testing.assert_close(random_model.logits(canvas, full, start), raw[:, start - 1 : -1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(shifted[:, 1:], raw[:, 1:], atol=1e-3)  # the shift is not a no-op


def test_attention_is_bidirectional(random_model):
    """Changing the last canvas token changes the logits of the first response position."""
    canvas = _canvas(random_model)
    full = torch.ones_like(canvas, dtype=torch.bool)
    start = canvas.shape[1] - 6
    edited = canvas.clone()
    edited[0, -1] = random_model.tokenizer.convert_tokens_to_ids("<|im_start|>")
    before, after = random_model.logits(canvas, full, start), random_model.logits(edited, full, start)
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-4


def test_left_padding_with_the_key_mask_does_not_change_logits(random_model):
    """A prompt alone and left-padded next to a longer prompt gets the same logits."""
    short = random_model.encode_prompt("Hi")
    long = random_model.encode_prompt("Tell me a short story about a quiet garden, please.")
    masks = [random_model.mask_token_id] * 5
    pad = len(long) - len(short)
    assert pad > 0
    batch = torch.tensor([[random_model.pad_token_id] * pad + short + masks, long + masks])
    keep = torch.tensor([[False] * pad + [True] * (len(short) + 5), [True] * (len(long) + 5)])
    alone = torch.tensor([short + masks])
    padded_logits = random_model.logits(batch, keep, pad + 1)[0]  # from the 2nd real token on
    alone_logits = random_model.logits(alone, torch.ones_like(alone, dtype=torch.bool), 1)[0]
    torch.testing.assert_close(padded_logits, alone_logits, atol=1e-5, rtol=1e-5)
    # without the key mask the pads leak into the prompt: the test can tell the difference
    leaky = random_model.logits(batch, torch.ones_like(keep), pad + 1)[0]
    assert not torch.allclose(leaky, alone_logits, atol=1e-4)


# ----------------------------------------------------------------------------- missing weights


def test_missing_local_folder_names_the_key():
    with pytest.raises(WeightsUnavailable, match=r"model\.path"):
        resolve_checkpoint("/nonexistent", "model.path")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(WeightsUnavailable, match=r"reward\.path.*config\.json"):
        resolve_checkpoint(str(tmp_path), "reward.path")


def test_uncached_hub_id_offline_points_to_the_tiny_setup(monkeypatch, tmp_path):
    """Offline and not in the cache: fail at once, naming the key and the way out."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as info:
        resolve_checkpoint("entrgi-tests/not-a-cached-model", "reward.path")
    message = str(info.value)
    assert "reward.path" in message and "entrgi-tests/not-a-cached-model" in message
    assert "experiment=tiny" in message


def test_model_constructor_fails_before_loading_anything():
    with pytest.raises(WeightsUnavailable, match=r"model\.path"):
        DiffusionLM(DiffusionLMConfig(path="/nonexistent/dream"))
