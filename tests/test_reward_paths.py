"""The reward model's two input paths agree, and the embedding path handles masks and padding."""

from __future__ import annotations

import pytest
import torch

from entrgi.rewards.vocab_bridge import build_vocab_bridge

PROMPTS = ["Describe the cat.", "Why is the old robot so happy today, and what does it see?"]
RESPONSES = ["The cat is small.", "The robot sees the star. It is warm and old."]


def _rm_tokens(reward, texts):
    ids = [reward.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = max(map(len, ids)) + 3
    tokens = torch.tensor([x + [0] * (length - len(x)) for x in ids])
    visible = torch.tensor([[True] * len(x) + [False] * (length - len(x)) for x in ids])
    return tokens, visible


@pytest.fixture
def visible_positions(random_reward, monkeypatch):
    """reward.positions=visible (fidelity=consistent): positions count only what the RM sees."""
    monkeypatch.setattr(random_reward.config, "positions", "visible")


def test_hard_embeddings_score_like_the_text(random_reward, visible_positions):
    """One-hot embeddings of a text through the embedding path == the text path (varying lengths)."""
    tokens, visible = _rm_tokens(random_reward, RESPONSES)
    layout = random_reward.layout(PROMPTS, 1, tokens.shape[1])
    one_hot = torch.nn.functional.one_hot(tokens, random_reward.embedding_table.shape[0]).float()
    by_embeds = random_reward.score_embeds(layout, one_hot @ random_reward.embedding_table, visible)
    by_text = random_reward.score_texts(PROMPTS, RESPONSES)
    torch.testing.assert_close(by_embeds.detach(), by_text, atol=1e-5, rtol=1e-4)


def test_suffixes_of_different_lengths(random_reward, monkeypatch, visible_positions):
    """A template whose suffix depends on the prompt still pools at the true last token."""
    template = (
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{%- if m.role == 'assistant' %}{{ messages[0].content | length * '!' }}{% endif %}{%- endfor %}"
    )
    monkeypatch.setattr(random_reward.tokenizer, "chat_template", template)
    suffixes = [len(random_reward.template_parts(p)[1]) for p in PROMPTS]
    assert suffixes[0] != suffixes[1]
    tokens, visible = _rm_tokens(random_reward, RESPONSES)
    layout = random_reward.layout(PROMPTS, 1, tokens.shape[1])
    by_embeds = random_reward.score_embeds(layout, random_reward.embedding_table[tokens], visible)
    torch.testing.assert_close(by_embeds, random_reward.score_texts(PROMPTS, RESPONSES), atol=1e-5, rtol=1e-4)


def test_hidden_positions_and_batch_padding_do_not_change_a_score(random_reward, visible_positions):
    """Whatever sits at hidden response positions, and whoever shares the batch, a score is unchanged."""
    tokens, visible = _rm_tokens(random_reward, RESPONSES)
    table = random_reward.embedding_table
    layout = random_reward.layout(PROMPTS[:1], 1, tokens.shape[1])
    alone = random_reward.score_embeds(layout, table[tokens[:1]], visible[:1])
    scrambled = torch.where(visible, tokens, torch.randint_like(tokens, 5, 50))
    together = random_reward.score_embeds(random_reward.layout(PROMPTS, 1, tokens.shape[1]), table[scrambled], visible)
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-4)


def test_gradients_are_finite_with_left_padding(random_reward):
    tokens, visible = _rm_tokens(random_reward, RESPONSES)
    embeds = random_reward.embedding_table[tokens].clone().requires_grad_(True)
    random_reward.score_embeds(random_reward.layout(PROMPTS, 1, tokens.shape[1]), embeds, visible).sum().backward()
    assert torch.isfinite(embeds.grad).all()
    assert embeds.grad[visible].abs().sum() > 0
    assert embeds.grad[~visible].abs().sum() == 0  # hidden positions receive no gradient


def test_vocab_bridge_maps_by_token_string(random_model, random_reward):
    bridge = build_vocab_bridge(random_model.tokenizer, random_reward.tokenizer, random_model.vocab_size + 3)
    dllm_tokens = random_model.tokenizer.convert_ids_to_tokens(list(range(len(random_model.tokenizer))))
    rm_vocab = random_reward.tokenizer.get_vocab()
    for i, token in enumerate(dllm_tokens):
        if token in rm_vocab:
            assert bridge.token_mapping[i] == rm_vocab[token] and bridge.exact[i]
        else:
            assert bridge.token_mapping[i] == random_reward.tokenizer.eos_token_id and not bridge.exact[i]
    assert not bridge.exact[-3:].any()  # ids past the tokenizer (embedding padding) are unmapped
    expected = sum(t in rm_vocab for t in dllm_tokens) / len(dllm_tokens)
    assert abs(bridge.coverage - expected) < 1e-9
    assert 0.3 < bridge.coverage < 1.0  # the vocabularies overlap but differ, like Dream's and Qwen3's


@pytest.mark.parametrize("hide", [0, 3])
def test_prefix_cache_matches_the_full_pass(random_paths, hide):
    """Scores and gradients with the cached prefix keys/values equal a full RM pass (prompts of different lengths)."""
    from entrgi.rewards import RewardModel, RewardModelConfig

    results = []
    for cached in (False, True):
        reward = RewardModel(RewardModelConfig(path=str(random_paths["reward"]), prefix_cache=cached, device="cpu"))
        tokens, visible = _rm_tokens(reward, RESPONSES)
        if hide:
            visible[:, -hide:] = False
        layout = reward.layout(PROMPTS, 2, tokens.shape[1])
        assert (layout.prefix_cache is not None) == cached
        embeds = reward.embedding_table[tokens.repeat_interleave(2, 0)].clone().requires_grad_(True)
        scores = reward.score_embeds(layout, embeds, visible.repeat_interleave(2, 0))
        scores.sum().backward()
        results.append((scores.detach(), embeds.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)


def test_prefix_cache_survives_repeated_passes(random_reward):
    """Each pass starts from the prefix alone: a second pass gives the same score as the first."""
    tokens, visible = _rm_tokens(random_reward, RESPONSES)
    layout = random_reward.layout(PROMPTS, 1, tokens.shape[1])
    assert layout.prefix_cache is not None
    embeds = random_reward.embedding_table[tokens].clone().requires_grad_(True)
    first = random_reward.score_embeds(layout, embeds, visible)
    first.sum().backward()
    torch.testing.assert_close(random_reward.score_embeds(layout, embeds, visible).detach(), first.detach())
