"""The `fidelity` group: `reference` is the authors' script, `consistent` makes the RM score what guidance optimised.

Hand-made cases: a response with a hidden tail after EOS (positions), stop tokens (what guidance
hides, where the final text ends), leading newlines, a think block, `<|im_end|>` followed by more
text and trailing whitespace (what the chat template does to a response). The authors' guided
step (`main_expts/entrgi.py`, `optimize_logits`) is restated here from the script, with the RM
called on `inputs_embeds` and an attention mask only: no position ids.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import guidance_config

from entrgi.components import build
from entrgi.guidance import GuidanceContext, RewardGradientGuidance
from entrgi.noise import Stream, TrajectoryNoise
from entrgi.schedule import EntropySchedule, ScheduleConfig
from entrgi.validation import ConfigError

TRICKY = [
    "\n\nThe grey frog sleeps by the field.",
    "<think>a plan</think>The cat is small.",
    "The dog is old.<|im_end|>And more text after it.",
    "The star is warm.  \n",
]


def test_overlays_set_only_existing_keys_and_are_recorded(compose):
    reference, consistent = compose([]), compose(["fidelity=consistent"])
    assert (reference.fidelity, consistent.fidelity) == ("reference", "consistent")
    pick = lambda c: (c.reward.positions, c.reward.hide_from, c.reward.text_path, c.model.decode)  # noqa: E731
    assert pick(reference) == ("absolute", "eos", "template", "whole")
    assert pick(consistent) == ("visible", "stop", "splice", "to_stop")
    assert compose(["fidelity=consistent", "reward.positions=absolute"]).reward.positions == "absolute"


# ----------------------------------------------------------------------------- reference: the authors' step


def _dream_top_p(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    ordered, index = torch.sort(scaled, descending=True)
    p = torch.softmax(ordered, dim=-1)
    drop = torch.zeros_like(scaled, dtype=torch.bool).scatter(-1, index, (p.cumsum(-1) - p) > top_p)
    return scaled.masked_fill(drop, float("-inf"))


def authors_step(model, reward, table, prompt, response, masked, logits, noise, step, *, M, eta, tau, top_p):
    """`optimize_logits` of the authors' script for one prompt, its K rows; returns phi at the masked positions.

    The hard tokens are drawn by inverse CDF from entrgi's uniforms (the script calls torch.multinomial).
    """
    prefix_ids, suffix_ids = reward.template_parts(prompt)
    embed = reward.network.get_input_embeddings()
    prefix, suffix = embed(torch.tensor([prefix_ids])), embed(torch.tensor([suffix_ids]))
    rows, length = response.shape
    phi = logits[masked].detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([phi], lr=eta)
    for iteration in range(M):
        optimizer.zero_grad()
        uniforms = noise.uniform(Stream.GUIDANCE_TOKEN, step, length, iteration)[masked].double()
        probs = torch.softmax(phi, dim=-1)
        entropy = -(probs * torch.log(probs + 1e-10)).sum(-1)
        weight = (entropy / math.log(probs.shape[-1])).detach()
        scaled = phi / tau
        soft = torch.softmax(scaled, dim=-1) @ table
        drawable = scaled.detach().clone()
        drawable[:, model.mask_token_id] = float("-inf")
        cdf = torch.softmax(_dream_top_p(drawable, top_p), dim=-1).double().cumsum(-1)
        hard_ids = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
        mixed = soft + weight.unsqueeze(-1) * (table[hard_ids] - soft).detach()
        embeds = torch.zeros(rows, length, table.shape[1])
        embeds[masked] = mixed
        embeds[~masked] = table[response[~masked]]
        ids = response.clone()
        ids[masked] = phi.argmax(-1)
        attention = torch.ones(rows, prefix.shape[1] + length + suffix.shape[1], dtype=torch.long)
        for r in range(rows):
            eos_found = False
            for i in range(length):
                if eos_found or ids[r, i] == model.pad_token_id:
                    attention[r, prefix.shape[1] + i] = 0
                if ids[r, i] == model.eos_token_id:
                    eos_found = True
        full = torch.cat([prefix.expand(rows, -1, -1), embeds, suffix.expand(rows, -1, -1)], dim=1)
        scores = reward.network(inputs_embeds=full, attention_mask=attention).logits[:, 0]
        (-scores.sum()).backward()
        optimizer.step()
    return phi.detach()


def _hidden_tail_case(model):
    """Two rows; row 0 has a committed EOS at column 3, so columns 3.. are hidden from the RM."""
    words = model.tokenizer("The cat sees", add_special_tokens=False)["input_ids"][:2]
    mask, eos = model.mask_token_id, model.eos_token_id
    response = torch.tensor([[mask, *words, eos, mask, mask, mask, mask], [mask, *words, mask, mask, mask, mask, mask]])
    return response, response == mask


@pytest.mark.parametrize("positions", ["absolute", "visible"])
def test_the_reference_guided_step_is_the_authors_step(random_model, random_reward, monkeypatch, positions):
    """fidelity=reference: equal to the authors' step, position ids included; visible positions differ."""
    monkeypatch.setattr(random_reward.config, "positions", positions)
    guidance = RewardGradientGuidance(guidance_config(M=3, eta=0.5), model=random_model, reward=random_reward)
    prompt = "Describe the quiet cat."
    response, masked = _hidden_tail_case(random_model)
    noise = TrajectoryNoise.for_prompts(1, ["p"], 2)
    logits = 3 * torch.randn(2, response.shape[1], random_model.vocab_size, generator=torch.Generator().manual_seed(0))
    guidance.begin_batch([prompt], 2, response.shape[1])
    ours = guidance.steer(logits, GuidanceContext(0, response, masked, noise)).logits[masked]
    theirs = authors_step(random_model, random_reward, guidance.table, prompt, response, masked, logits, noise, 0,
                          M=3, eta=0.5, tau=0.7, top_p=0.95)
    assert not torch.allclose(theirs, logits[masked], atol=1e-3)  # guidance moved the logits
    same = torch.allclose(ours, theirs, atol=2e-4, rtol=1e-4)
    assert same if positions == "absolute" else not same


# ----------------------------------------------------------------------------- consistent: one view of the response


def _one_hot_scores(reward, prompt, texts):
    """The embedding path on the one-hot RM embeddings of each text (its own RM tokens, all visible)."""
    scores = []
    for text in texts:
        ids = torch.tensor([reward.tokenizer(text, add_special_tokens=False)["input_ids"]])
        one_hot = torch.nn.functional.one_hot(ids, reward.embedding_table.shape[0]).float()
        layout = reward.layout([prompt], 1, ids.shape[1])
        visible = torch.ones_like(ids, dtype=torch.bool)
        scores.append(reward.score_embeds(layout, one_hot @ reward.embedding_table, visible))
    return torch.cat(scores).detach()


def test_consistent_text_path_scores_what_the_embedding_path_reads(toy_reward, monkeypatch):
    prompt = "Describe the grey frog."
    monkeypatch.setattr(toy_reward.config, "positions", "visible")
    monkeypatch.setattr(toy_reward.config, "text_path", "splice")
    by_text = toy_reward.score_texts([prompt] * len(TRICKY), TRICKY)
    torch.testing.assert_close(_one_hot_scores(toy_reward, prompt, TRICKY), by_text, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(toy_reward.config, "text_path", "template")  # the chat template rewrites some responses
    templated = toy_reward.score_texts([prompt] * len(TRICKY), TRICKY)
    assert (templated - by_text).abs().max() > 1e-2


def test_guidance_hides_from_eos_or_from_any_stop_token(random_model, random_reward, monkeypatch):
    im_end = random_model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    monkeypatch.setattr(random_model, "stop_token_ids", sorted({random_model.eos_token_id, im_end}))
    response = torch.tensor([[5, im_end, 6, random_model.eos_token_id, 7]])
    masked = torch.zeros_like(response, dtype=torch.bool)
    visible = {}
    for hide_from in ("eos", "stop"):
        monkeypatch.setattr(random_reward.config, "hide_from", hide_from)
        guidance = RewardGradientGuidance(guidance_config(), model=random_model, reward=random_reward)
        visible[hide_from] = guidance._visible(response, masked, response).tolist()
    assert visible == {"eos": [[True, True, True, False, False]], "stop": [[True, False, False, False, False]]}


def test_deprioritised_samples_cover_every_stop_token():
    """Both stop tokens (Dream's EOS and <|im_end|>, LLaDA's EOS and <|eot_id|>) rank after the rest."""
    probs = torch.full((1, 4, 5), 0.2)
    tokens = torch.tensor([[3, 4, 0, 1]])
    masked = torch.ones(1, 4, dtype=torch.bool)
    noise = TrajectoryNoise.for_prompts(0, ["p"], 1)
    schedule = EntropySchedule(ScheduleConfig(steps=2))  # commits floor(4 · 0.4995) = 1; all tie, leftmost first
    assert schedule.commit_mask(masked, tokens, probs, 0, noise, 3).tolist() == [[False, True, False, False]]
    assert schedule.commit_mask(masked, tokens, probs, 0, noise, torch.tensor([3, 4])).tolist() == [
        [False, False, True, False]
    ]


# ----------------------------------------------------------------------------- LLaDA as LLaDA runs it


def test_llada_loads_without_remote_code(compose, random_paths, monkeypatch, tmp_path):
    """The tiny LLaDA config.json carries the real auto_map; model=llada-8b names its tokenizer class, so
    loading never reaches transformers' remote-code resolution (patched here to refuse)."""
    from transformers import dynamic_module_utils

    def refuse(*args, **kwargs):
        raise RuntimeError("asked to run remote code")

    folder = tmp_path / "llada"
    shutil.copytree(random_paths["llada"], folder)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.pop("tokenizer_class", None)  # as a checkpoint that leaves the class to config.json
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    assert "AutoModelForCausalLM" in json.loads((folder / "config.json").read_text())["auto_map"]
    monkeypatch.setattr(dynamic_module_utils, "resolve_trust_remote_code", refuse)
    cfg = compose(["model=llada-8b"])
    cfg.model.path = str(folder)
    cfg.model.device = "cpu"
    cfg.model.mask_token_id, cfg.model.eos_token_id = None, None  # the tiny vocabulary's own ids
    model = build(cfg.model)
    assert model.mask_token_id == model.tokenizer.convert_tokens_to_ids("<|mdm_mask|>")


@pytest.mark.parametrize(("key", "value"), [("scale_logits", True), ("input_emb_norm", True),
                                            ("layer_norm_type", "default"), ("activation_type", "gelu")])
def test_llada_flags_the_mapping_cannot_express_are_refused(compose, random_paths, tmp_path, key, value):
    folder = tmp_path / "llada"
    shutil.copytree(random_paths["llada"], folder)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    cfg = compose(["model=random-llada"])
    cfg.model.path = str(folder)
    with pytest.raises(ConfigError, match=rf"^model\.path=.* sets {key}=") as error:
        build(cfg.model)
    assert "\n" not in str(error.value)


def test_llada_samples_without_a_nucleus_unless_asked(compose):
    assert compose(["model=llada-8b"]).sampler.top_p == 1.0
    assert compose(["model=llada-8b", "sampler.top_p=0.9"]).sampler.top_p == 0.9
    assert compose([]).sampler.top_p == 0.95
