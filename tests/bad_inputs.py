"""The table of bad inputs (issue 15): each one, given to the real CLI, must stop the job with exit
code 2 and one stderr line naming the key, before any model loads. Shared by
tests/test_bad_inputs.py and launch/bad_inputs_table.py (which times each case)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from entrgi.toy.world import toy_world_path

BASE = ["experiment=tiny", "logger=none", "guidance=none"]


def _prompts(folder: Path, name: str, content: bytes | str) -> str:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _checkpoint(folder: Path, part: str, name: str, damage) -> str:
    target = folder / name
    shutil.copytree(toy_world_path(part), target)
    damage(target)
    return str(target)


def _truncate(file: Path, keep: float) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def cases(folder: Path) -> list[tuple[str, list[str], str]]:
    """(what, overrides, the key the one line must name), with the bad files written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("Hi there", "a"), ("Hello", "b")]
    lines = "".join(json.dumps({"text": t, "id": i, "kind": "k"}) + "\n" for t, i in rows)
    prompts = ["benchmark=prompts", "benchmark.prompt_field=text"]

    def file(name, content):
        return [*prompts, f"benchmark.path={_prompts(folder, name, content)}"]

    long_prompt = "Describe a grey frog that sleeps by the field. " * 400

    def cut_config(folder):
        _truncate(folder / "config.json", 0.5)

    def cut_weights(folder):
        _truncate(folder / "model.safetensors", 0.7)

    def no_tokenizer(folder):
        (folder / "vocab.json").unlink()

    def no_mask(folder):  # neither config.json nor the tokenizer names a mask token
        for name, key in (("config.json", "mask_token_id"), ("tokenizer_config.json", "mask_token")):
            settings = json.loads((folder / name).read_text())
            settings.pop(key, None)
            (folder / name).write_text(json.dumps(settings))

    def remote_code(folder):
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_x.XForSequenceClassification"}
        (folder / "config.json").write_text(json.dumps(config))

    return [
        ("duplicate prompt ids", file("dup.jsonl", lines + json.dumps({"text": "Other", "id": "a"}) + "\n")
         + ["benchmark.id_field=id"], "benchmark.id_field"),
        ("no prompt file", ["benchmark=prompts"], "benchmark.path"),
        ("empty prompt file", file("empty.jsonl", ""), "benchmark.path"),
        ("wrong prompt_field", [*file("ok.jsonl", lines), "benchmark.prompt_field=question"],
         "benchmark.prompt_field"),
        ("all prompts blank", file("blank.jsonl", json.dumps({"text": " "}) + "\n"), "benchmark.prompt_field"),
        ("non-UTF-8 prompt file", file("latin1.jsonl", b'{"text": "caf\xe9"}\n'), "benchmark.path"),
        ("bad JSON line", file("bad.jsonl", lines + '{"text": "x"\n'), "benchmark.path"),
        ("unknown category", file("cat.jsonl", lines) + ["benchmark.category_field=kind", "benchmark.categories=[z]"],
         "benchmark.categories"),
        ("prompt longer than the context", file("long.jsonl", json.dumps({"text": long_prompt}) + "\n"),
         "benchmark.truncate"),
        ("evaluator=oracle on non-toy prompts", [*file("plain.jsonl", lines), "evaluator=[oracle]"],
         "evaluator=oracle"),
        ("cut-off config.json", [f"model.path={_checkpoint(folder, 'dllm', 'cut-config', cut_config)}"], "model.path"),
        ("truncated safetensors", [f"reward.path={_checkpoint(folder, 'reward', 'cut-weights', cut_weights)}"],
         "reward.path"),
        ("missing tokenizer", [f"model.path={_checkpoint(folder, 'dllm', 'no-tokenizer', no_tokenizer)}"],
         "model.path"),
        ("model=hf on a checkpoint without a mask token",
         ["model=hf", f"model.path={_checkpoint(folder, 'dllm', 'no-mask', no_mask)}",
          "model.backbone=Qwen2ForCausalLM", "model.logit_shift=true", "model.tokenizer_class=Qwen2Tokenizer"],
         "model.mask_token_id"),
        ("reward=classifier needing remote code, not trusted",
         ["reward=classifier", f"reward.path={_checkpoint(folder, 'reward', 'remote-code', remote_code)}"],
         "reward.trust_remote_code"),
        ("reward=ar-likelihood without its weights", ["reward=ar-likelihood"], "reward.path"),
        ("model.device=cuda without CUDA", ["model.device=cuda"], "model.device"),
        ("guidance.min_coverage above the coverage", ["guidance=entrgi", "guidance.min_coverage=0.99"],
         "guidance.min_coverage"),
        ("top_p out of range", ["sampler.top_p=1.5"], "sampler.top_p"),
        ("a dLLM cache without blocks", ["model.cache=prefix"], "model.cache"),
        ("gradient guidance with a text reward", ["guidance=entrgi", "reward=regex", "reward.keywords=[fox]"],
         "reward=regex"),
        ("a pattern that is not a regular expression", ["reward=regex", "reward.patterns=[{pattern: 'a(b'}]"],
         "reward.patterns[0].pattern"),
        ("an unknown reward function", ["reward=callable", "reward.function=no_such_module:score"],
         "reward.function"),
        # Refused while Hydra composes the command line (entrgi.cli).
        ("value outside the field's enum", ["model.decode=nope"], "model.decode"),
        ("unknown option of a group", ["guidance=nope"], "guidance=nope"),
        ("misspelt experiment", ["experiment=tinny"], "experiment=tinny"),
        ("unknown key", ["sampler.nope=1"], "sampler.nope"),
        ("W&B init_timeout of zero", ["logger=wandb", "logger.init_timeout=0"], "logger.init_timeout"),
    ]
