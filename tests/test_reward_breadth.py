"""Issue 18's rewards: reward=classifier (remote code refused unless trusted), reward=ar-likelihood (its text path
equals its embedding path), and RMs with another tokenizer (the retokenising bridge, coverage of generated tokens)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from entrgi.formats import causal_lm_config, save_reward
from entrgi.rewards import ARLikelihood, ARLikelihoodConfig, ResponseTargets
from entrgi.rewards.vocab_bridge import GeneratedCoverage, build_vocab_bridge, visible_tokens
from entrgi.toy.world import toy_world_path

PROMPTS = ["Describe the cat.", "Why is the old robot so happy today, and what does it see?"]
RESPONSES = ["The cat is small.", "The robot sees the star. It is warm and old."]
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.fixture(scope="session")
def ar_path(tmp_path_factory):
    """A tiny random Qwen3 causal LM in Qwen3-0.6B's on-disk format, with the toy RM's tokenizer and template."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("ar-lm")
    tokenizer = AutoTokenizer.from_pretrained(toy_world_path("reward"))
    torch.manual_seed(3)
    save_reward(folder, Qwen3ForCausalLM(causal_lm_config(tokenizer, TINY, initializer_range=0.2)), tokenizer)
    return folder


def _ar(path, **options):
    return ARLikelihood(ARLikelihoodConfig(path=str(path), device="cpu", positions="visible", **options))


def _rm_tokens(reward, texts, extra=3):
    ids = [reward.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = max(map(len, ids)) + extra
    tokens = torch.tensor([x + [0] * (length - len(x)) for x in ids])
    visible = torch.tensor([[True] * len(x) + [False] * (length - len(x)) for x in ids])
    return tokens, visible


def _by_hand(reward, prompt, response):
    """log p(response + suffix | prefix) restated: one unpadded forward of the spliced ids."""
    prefix, suffix = reward.template_parts(prompt)
    ids = prefix + reward.tokenizer(response, add_special_tokens=False)["input_ids"] + suffix
    logits = reward.network(torch.tensor([ids])).logits[0, :-1].float()
    picked = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])][len(prefix) - 1 :]
    return picked.mean() if reward.config.normalize else picked.sum()


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("cached", [True, False])
def test_ar_likelihood_text_path_equals_embedding_path(ar_path, normalize, cached):
    """One-hot embeddings and hard targets through the embedding path == the text path == a hand-written pass,
    with a hidden tail of varying length (each target read from the last column the LM sees)."""
    reward = _ar(ar_path, normalize=normalize, text_path="splice", prefix_cache=cached)
    tokens, visible = _rm_tokens(reward, RESPONSES)
    layout = reward.layout(PROMPTS, 1, tokens.shape[1])
    assert (layout.prefix_cache is not None) == cached
    scrambled = torch.where(visible, tokens, torch.randint_like(tokens, 5, 50))  # hidden columns: any token
    one_hot = torch.nn.functional.one_hot(scrambled, reward.embedding_table.shape[0]).float()
    by_embeds = reward.score_embeds(layout, one_hot @ reward.embedding_table, visible, ResponseTargets(scrambled))
    by_text = reward.score_texts(PROMPTS, RESPONSES)
    by_hand = torch.stack([_by_hand(reward, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    torch.testing.assert_close(by_text, by_hand.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(by_embeds.detach(), by_text, atol=1e-5, rtol=1e-4)
    assert (by_text < 0).all()


def test_ar_likelihood_relaxed_targets(ar_path):
    """At a relaxed position the value is (1 − w)·E_q[log p] + w·log p(hard), the gradient that of E_q[log p]:
    w = 1 scores like the hard target, and a one-hot q equal to the hard token changes nothing."""
    reward = _ar(ar_path, normalize=False, text_path="splice")
    tokens, visible = _rm_tokens(reward, RESPONSES, extra=0)
    layout = reward.layout(PROMPTS, 1, tokens.shape[1])
    def run(targets):
        embeds = reward.embedding_table[tokens].clone().requires_grad_(True)
        score = reward.score_embeds(layout, embeds, visible, targets)
        score.sum().backward()
        return score.detach(), embeds.grad

    hard, hard_grad = run(ResponseTargets(tokens))
    positions = torch.tensor([[1, 2], [0, 3]])
    vocab = reward.embedding_table.shape[0]

    def relaxed(probs, w):
        return run(ResponseTargets(tokens, positions, torch.ones(2, 2, dtype=torch.bool), probs, torch.full((2, 2), w)))

    one_hot = torch.nn.functional.one_hot(tokens.gather(1, positions), vocab).float()
    uniform = torch.full((2, 2, vocab), 1.0 / vocab)
    torch.testing.assert_close(relaxed(one_hot, 0.0)[0], hard, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(relaxed(one_hot, 0.0)[1], hard_grad, atol=1e-5, rtol=1e-4)
    (soft, soft_grad), (straight, straight_grad) = relaxed(uniform, 0.0), relaxed(uniform, 1.0)
    torch.testing.assert_close(straight, hard, atol=1e-5, rtol=1e-4)  # w = 1: the hard token's value ...
    torch.testing.assert_close(straight_grad, soft_grad, atol=1e-5, rtol=1e-4)  # ... the expected term's gradient
    assert not torch.allclose(soft_grad, hard_grad, atol=1e-4) and not torch.allclose(soft, hard, atol=1e-3)
    torch.testing.assert_close(relaxed(uniform, 0.5)[0], (soft + hard) / 2, atol=1e-5, rtol=1e-4)


def _hand_made_pair():
    """A dLLM vocabulary and an RM vocabulary written by hand: 'Ġcat' is in both, 'Ġdog' only in the dLLM's (the
    RM spells it 'Ġd' 'og'), 'Ġzebra' in neither whole (the RM spells it 'Ġz' 'eb' 'ra')."""
    def tokenizer(vocab, merges, specials):
        model = models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
        backend = Tokenizer(model)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        from tokenizers import decoders

        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(specials)
        return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=specials[0])

    letters = list("abcdegortzĠ")
    dllm = tokenizer(letters + ["Ġc", "at", "Ġcat", "Ġd", "og", "Ġdog", "Ġz", "eb", "ra", "ebra", "Ġzebra"],
                     [("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("Ġ", "d"), ("o", "g"), ("Ġd", "og"), ("Ġ", "z"),
                      ("e", "b"), ("r", "a"), ("eb", "ra"), ("Ġz", "ebra")], ["<eos>", "<mask>"])
    rm = tokenizer(letters + ["Ġc", "at", "Ġcat", "Ġd", "og", "Ġz", "eb", "ra"],
                   [("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("Ġ", "d"), ("o", "g"), ("Ġ", "z"), ("e", "b"),
                    ("r", "a")], ["<|end|>"])
    return dllm, rm


def test_retokenizing_bridge_on_hand_made_vocabularies():
    """exact: unmatched tokens read the RM's fallback row; retokenize: the mean of their RM pieces' rows.
    Special tokens and embedding padding keep the fallback in both."""
    dllm, rm = _hand_made_pair()
    ids, rm_ids = dllm.get_vocab(), rm.get_vocab()
    table = torch.randn(len(rm), 4)
    exact = build_vocab_bridge(dllm, rm, len(dllm) + 2, "exact")
    retok = build_vocab_bridge(dllm, rm, len(dllm) + 2, "retokenize")
    fallback = rm_ids["<|end|>"]
    for bridge in (exact, retok):
        mapped = bridge.mapped_table(table)
        torch.testing.assert_close(mapped[ids["Ġcat"]], table[rm_ids["Ġcat"]])
        for special in ("<eos>", "<mask>"):
            torch.testing.assert_close(mapped[ids[special]], table[fallback])
        torch.testing.assert_close(mapped[-2:], table[[fallback, fallback]])
    torch.testing.assert_close(exact.mapped_table(table)[ids["Ġdog"]], table[fallback])
    pieces = {"Ġdog": ["Ġd", "og"], "Ġzebra": ["Ġz", "eb", "ra"], "ebra": ["eb", "ra"]}
    for token, parts in pieces.items():
        expected = table[[rm_ids[p] for p in parts]].mean(0)
        torch.testing.assert_close(retok.mapped_table(table)[ids[token]], expected)
        assert retok.token_mapping[ids[token]] == rm_ids[parts[0]]  # the first piece: ar-likelihood's target
    assert retok.retokenized == len(pieces) and exact.retokenized == 0


def test_coverage_of_generated_tokens_on_a_hand_made_pair():
    """Vocabulary coverage counts the dLLM's vocabulary; generated coverage the tokens responses hold before EOS."""
    dllm, rm = _hand_made_pair()
    bridge = build_vocab_bridge(dllm, rm, len(dllm))
    # 24 dLLM tokens; not in the RM: Ġdog, ebra, Ġzebra, <eos>, <mask>
    assert bridge.coverage == pytest.approx(19 / 24)
    v = dllm.get_vocab()

    class Model:
        tokenizer, vocab_size, eos_token_id, stop_token_ids = dllm, len(dllm), v["<eos>"], [v["<eos>"]]

    class Reward:
        tokenizer = rm

        class config:  # noqa: N801
            hide_from = "eos"

    coverage = GeneratedCoverage(Model, Reward)
    responses = torch.tensor([[v["Ġcat"], v["Ġdog"], v["Ġcat"], v["<eos>"], v["Ġdog"]],
                              [v["Ġzebra"], v["Ġcat"], v["Ġcat"], v["Ġcat"], v["<eos>"]]])
    coverage.add(responses)
    assert coverage.artifacts()["generated_coverage"]["counts"] == [5.0, 7.0]  # Ġdog after EOS is not read
    assert GeneratedCoverage.summary(coverage.artifacts()["generated_coverage"]) == {"generated_coverage": 5 / 7}
    assert visible_tokens(responses, torch.tensor([v["<eos>"]])).sum() == 7


# --- the options as jobs: composed, refused without weights or trust, run guided on tiny real-format checkpoints ---

SMALL = ["experiment=tiny", "logger=none", "evaluator=[]", "benchmark.n_prompts=2", "sampler.num_samples=2",
         "schedule.steps=4", "sampler.max_new_tokens=8", "sampler.batch_size=2"]


def _samples(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def _job(compose, tmp_path, name, overrides):
    from entrgi.experiment import run_experiment

    summary = run_experiment(compose(SMALL + overrides), tmp_path / name)
    return summary, _samples(tmp_path / name)


@pytest.mark.slow
def test_classifier_option_is_the_preset_given_a_path(compose, tmp_path, one_thread):
    """reward=classifier with the toy RM's folder runs a guided job exactly as reward=tiny (the same class)."""
    path = f"reward.path={toy_world_path('reward')}"
    by_option, samples = _job(compose, tmp_path, "classifier", ["reward=classifier", path, "reward.device=cpu",
                                                                "guidance=entrgi"])
    by_preset, _ = _job(compose, tmp_path, "preset", ["guidance=entrgi"])
    assert by_option["top1_mean"] == by_preset["top1_mean"]
    assert by_option["generated_coverage"] == 1.0 and len(samples) == 2


@pytest.mark.parametrize("guidance", ["entrgi", "fk"])
def test_ar_likelihood_runs_guided_jobs(compose, tmp_path, ar_path, guidance, one_thread):
    """A guided tiny job through from_pretrained on the tiny Qwen3 causal LM; its final scores are the text path's."""
    summary, samples = _job(compose, tmp_path, guidance, ["reward=ar-likelihood", f"reward.path={ar_path}",
                                                           "reward.device=cpu", f"guidance={guidance}"])
    reward = ARLikelihood(ARLikelihoodConfig(path=str(ar_path), device="cpu", text_path="splice"))
    for record in samples:
        again = reward.score_texts([record["prompt"]] * len(record["responses"]), record["responses"])
        torch.testing.assert_close(torch.tensor(record["rewards"]), again, atol=1e-5, rtol=1e-4)
    assert summary["top1_mean"] < 0 and summary["generated_coverage"] == 1.0


@pytest.mark.slow
def test_retokenize_bridge_runs_a_guided_job_with_another_tokenizer(compose, tmp_path, one_thread):
    """The toy RM with a shifted tokenizer: generated coverage drops below 1; both bridges run."""
    from entrgi.toy.tokenizer_shift import shifted_toy_reward

    lost = shifted_toy_reward(tmp_path / "shifted")
    assert "Ġthe" in lost
    runs = {bridge: _job(compose, tmp_path, bridge, [f"reward.path={tmp_path / 'shifted'}", "guidance=entrgi",
                                                     f"reward.bridge={bridge}"])[0]
            for bridge in ("exact", "retokenize")}
    assert 0 < runs["exact"]["generated_coverage"] < 1
    assert runs["exact"]["vocab_coverage"] == runs["retokenize"]["vocab_coverage"] < 0.9


def _damaged_reward(tmp_path, change):
    folder = tmp_path / "rm"
    shutil.copytree(toy_world_path("reward"), folder)
    config = json.loads((folder / "config.json").read_text())
    change(config, folder)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _remote(config, folder):
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_x.XForSequenceClassification"}


def _new_type(config, folder):
    config["model_type"] = "not-in-transformers"


def _labels(config, folder):
    config["id2label"] = {"0": "bad", "1": "good"}


def _no_template(config, folder):
    (folder / "chat_template.jinja").unlink()
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))


@pytest.mark.parametrize(("change", "message"), [
    (_remote, r"reward.trust_remote_code=false: .* needs the checkpoint's own code \(its config.json has an auto_map"),
    (_new_type, r"reward.trust_remote_code=false: .*model_type 'not-in-transformers' is not one transformers knows"),
    (_labels, r"reward.path=.*: a reward classifier has one output, this one has 2 labels"),
    (_no_template, r"reward.path=.*: the tokenizer has no chat template"),
])
def test_reward_checkpoints_refused_before_loading(compose, tmp_path, change, message):
    from entrgi.benchmarks import Prompt
    from entrgi.preflight import check_inputs, check_remote_code
    from entrgi.validation import ConfigError

    folder = _damaged_reward(tmp_path, change)
    cfg = compose(["experiment=tiny", "reward=classifier", f"reward.path={folder}"])
    with pytest.raises(ConfigError, match=message):
        check_inputs(cfg, [Prompt("p", "Describe a grey frog.")])
    if change in (_remote, _new_type):  # trusted: the remote-code check lets it through
        check_remote_code(compose(["experiment=tiny", "reward=classifier", f"reward.path={folder}",
                                   "reward.trust_remote_code=true"]).reward, "reward")


@pytest.mark.parametrize("option", ["classifier", "ar-likelihood"])
def test_new_options_compose_and_fail_fast_without_weights(compose, option):
    from entrgi.weights import WeightsUnavailable, resolve_checkpoint

    cfg = compose(["experiment=tiny", f"reward={option}", "reward.path=/nonexistent/rm", "reward.bridge=retokenize"])
    assert cfg.reward.trust_remote_code is False and cfg.reward.bridge == "retokenize"
    with pytest.raises(WeightsUnavailable, match="reward.path='/nonexistent/rm'"):
        resolve_checkpoint(cfg.reward.path, "reward.path")


@pytest.mark.parametrize("bridge", ["exact", "retokenize"])
def test_ar_likelihood_guidance_reads_nothing_back(toy_model, ar_path, bridge):
    """entrgi through the ar-likelihood reward, either bridge: the denoising loop reads no device value on the host."""
    from conftest import guidance_config
    from test_host_sync import _denoise_reading_nothing

    from entrgi.guidance import RewardGradientGuidance
    from entrgi.schedule import EntropySchedule, ScheduleConfig

    reward = ARLikelihood(ARLikelihoodConfig(path=str(ar_path), device="cpu", bridge=bridge))
    guidance = RewardGradientGuidance(guidance_config(rule="entrgi", M=2), model=toy_model, reward=reward)
    result = _denoise_reading_nothing(toy_model, guidance, EntropySchedule(ScheduleConfig(steps=3)))
    assert result is not None
