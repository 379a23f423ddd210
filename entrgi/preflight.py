"""Pre-flight checks: whatever the input alone decides is checked before any model loads.

A job reads a config, a prompt file and checkpoint folders (the dLLM's, and the reward model's
when the reward is one or holds some). Everything that can be decided from those — a key left
unset, `cuda` on a machine without CUDA, gradient guidance with a reward that scores text only, a
text scorer's bad pattern or unknown function, a cut-off `config.json`, a truncated safetensors
file, a missing tokenizer, too little vocabulary overlap for guidance, a prompt longer than a
model's context, a reward or judge that cannot score these prompts — is checked here, in seconds,
and stops the job with one line that names the key to change. The runner (`entrgi.experiment`)
calls `check_job` right after validation and `check_inputs` once the prompts are loaded
(prompt-file checks live with the loading, in `entrgi.benchmarks`), and only then loads the weights.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from entrgi.benchmarks import Prompt, Truncate
from entrgi.models.block_cache import check_cache
from entrgi.models.diffusion_lm import encode_prompt, special_tokens
from entrgi.rewards.reward_model import RewardModel, template_parts
from entrgi.rewards.text import TextScorer
from entrgi.rewards.vocab_bridge import build_vocab_bridge
from entrgi.validation import ConfigError
from entrgi.weights import WeightsUnavailable, resolve_checkpoint, resolve_device

log = logging.getLogger(__name__)

# Below this share of dLLM tokens found in the RM vocabulary, guidance steers with many stand-ins.
COVERAGE_WARNING = 0.95
# Files any one of which makes a folder's tokenizer loadable.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")


def configure_threads(cfg: DictConfig) -> int:
    """Apply `run.threads` (torch's CPU threads). Unset, a job on the CPU uses one thread: small models
    gain nothing from more, and on a shared machine contending threads slow a job down many-fold.
    A job on a GPU keeps torch's default. Returns the number of threads in use."""
    threads = OmegaConf.select(cfg, "run.threads", default=None)
    if threads is None and resolve_device(str(OmegaConf.select(cfg, "model.device", default="auto"))).type == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def check_job(cfg: DictConfig, schedule: Any = None) -> None:
    """Config-only checks: unset keys, devices, the reward, settings that waste work (warned, one line each)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is not set: give it on the command line ({missing[0]}=...)")
    check_devices(cfg)
    check_reward(cfg)
    steps, length = OmegaConf.select(cfg, "schedule.steps"), OmegaConf.select(cfg, "sampler.max_new_tokens")
    if schedule is not None and length is not None:
        check_cache(OmegaConf.select(cfg, "model.cache", default="none"), schedule, length)
    if steps is not None and length is not None and steps > length:
        plan = schedule.planned_counts(length) if schedule is not None else None
        idle = f": {sum(1 for _, n in plan if n == 0)} of {steps} steps commit nothing" if plan else ""
        log.warning("schedule.steps=%d is more than sampler.max_new_tokens=%d%s", steps, length, idle)


def reward_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(key, node) of the `reward` node and of every reward inside it (a sum's terms): the nodes with a
    `_target_`, outermost first."""
    found = []

    def walk(node: DictConfig, key: str) -> None:
        if "_target_" in node:
            found.append((key, node))
        for child in node.keys():
            value = node._get_node(child)
            if isinstance(value, DictConfig) and not value._is_none() and not OmegaConf.is_missing(node, child):
                walk(value, f"{key}.{child}")

    walk(cfg.reward, "reward")
    return found


def reward_models(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(key, node) of the reward models among `reward_nodes`: the ones with a checkpoint, a tokenizer and a context."""
    return [(key, node) for key, node in reward_nodes(cfg) if issubclass(get_class(node._target_), RewardModel)]


def check_reward(cfg: DictConfig) -> None:
    """A gradient method (`Guidance.needs_gradient`) has a differentiable reward, and every text scorer's
    settings work (`TextScorer.check`: patterns compile, a function imports); else ConfigError naming them."""
    if get_class(cfg.guidance._target_).needs_gradient and not get_class(cfg.reward._target_).differentiable:
        raise ConfigError(f"{_option('guidance', cfg.guidance)} needs a differentiable reward; "
                          f"{_option('reward', cfg.reward)} scores text only (use guidance=none or fk)")
    for key, node in reward_nodes(cfg):
        scorer = get_class(node._target_)
        if issubclass(scorer, TextScorer):
            scorer.check(OmegaConf.to_object(node), key)


def _option(group: str, node: DictConfig) -> str:
    """`group=<option>` as composed (Hydra's choice), or `group._target_=<class>` outside a Hydra job."""
    choice = HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None
    return f"{group}={choice}" if choice else f"{group}._target_={node._target_}"


def check_devices(cfg: DictConfig) -> None:
    """Every `*.device` key of the model, the RM and the judges names a device this machine has."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key, value in _device_keys(cfg):
        device = str(value)
        if not device.startswith("cuda"):
            continue
        index = torch.device(device).index or 0
        if available == 0:
            raise ConfigError(f"{key}={device!r} but this machine has no usable CUDA device "
                              f"(torch {torch.__version__}); use {key}=cpu or {key}=auto")
        if index >= available:
            raise ConfigError(f"{key}={device!r} but only {available} CUDA device(s) are visible")


def _device_keys(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            continue
        value = node._get_node(key)
        if isinstance(value, DictConfig):
            if prefix or key in ("model", "reward", "evaluator"):
                yield from _device_keys(value, f"{prefix}{key}.")
        elif key == "device" and prefix:
            yield f"{prefix}{key}", node[key]


@dataclass
class Checkpoint:
    """A checkpoint folder checked to be complete, and its model config (config keys renamed)."""

    folder: Path
    config: dict[str, Any]
    tokenizer: Any


def check_checkpoint(path: str, key: str, config_keys: Mapping[str, str] | None = None,
                     tokenizer_class: str | None = None) -> Checkpoint:
    """Find the folder of `path` and check what loading would otherwise find late: a readable
    config.json, complete safetensors files and a tokenizer (loaded: it is small)."""
    folder = resolve_checkpoint(path, key)
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsUnavailable(f"{key}={path!r}: {config_file} is not valid JSON ({error}); "
                                 "the download was cut off? fetch the checkpoint again") from None
    if not isinstance(config, dict):
        raise WeightsUnavailable(f"{key}={path!r}: {config_file} is not a JSON object")
    for old, new in (config_keys or {}).items():
        if old in config:
            config[new] = config[old]
    for weights in sorted(folder.glob("*.safetensors")):
        _check_safetensors(weights, key, path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        absent = sorted(s for s in shards if not (folder / s).is_file())
        if absent:
            raise WeightsUnavailable(f"{key}={path!r}: {index.name} names {len(absent)} missing weight files, "
                                     f"e.g. {absent[0]}")
    elif not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise WeightsUnavailable(f"{key}={path!r}: {folder} holds no weights (*.safetensors)")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise WeightsUnavailable(f"{key}={path!r}: {folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)})")
    tokenizer_cls = getattr(transformers, tokenizer_class) if tokenizer_class else transformers.AutoTokenizer
    try:
        tokenizer = tokenizer_cls.from_pretrained(folder)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise WeightsUnavailable(f"{key}={path!r}: the tokenizer in {folder} cannot be loaded: "
                                 f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return Checkpoint(folder, config, tokenizer)


def _check_safetensors(file: Path, key: str, path: str) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes: a file
    shorter than its header says was cut off."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length)) if 8 + length <= size else None
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if header is None:
        raise WeightsUnavailable(f"{key}={path!r}: {file} is not a complete safetensors file (bad header); "
                                 "fetch the checkpoint again")
    end = max((info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"), default=0)
    if size < 8 + length + end:
        raise WeightsUnavailable(f"{key}={path!r}: {file} is truncated ({size} of {8 + length + end} bytes); "
                                 "fetch the checkpoint again")


def check_inputs(cfg: DictConfig, prompts: list[Prompt]) -> list[Prompt]:
    """Checks that need the prompts and the tokenizers (the dLLM's, each reward model's), not the weights.
    Returns the prompts, their starts cut when `benchmark.truncate=left` and they are too long for a
    model's context."""
    model = check_checkpoint(cfg.model.path, "model.path", cfg.model.get("config_keys"),
                             cfg.model.get("tokenizer_class"))
    check_model(cfg.model, model)
    for key, node in reward_models(cfg):
        check_remote_code(node, key)
    rewards = {key: check_checkpoint(node.path, f"{key}.path", None, node.get("tokenizer_class"))
               for key, node in reward_models(cfg)}
    for key, node in reward_models(cfg):
        check_reward_checkpoint(rewards[key], node, key)
    # The guidance feeds the RM dLLM tokens (a reward-gradient proposal inside SMC holds its key under proposal):
    # check the bridge. Such guidance differentiates `reward`, a reward model (check_reward).
    key = next((k for k in ("guidance.min_coverage", "guidance.proposal.min_coverage")
                if OmegaConf.select(cfg, k, default=None) is not None), None)
    if key is not None:
        min_coverage = OmegaConf.select(cfg, key)
        vocab_size = int(model.config.get("vocab_size") or len(model.tokenizer))
        coverage = build_vocab_bridge(model.tokenizer, rewards["reward"].tokenizer, vocab_size).coverage
        if coverage < min_coverage:
            raise ConfigError(f"{key}={min_coverage}: only {coverage:.4f} of the dLLM vocabulary "
                              f"(model.path={cfg.model.path}) maps exactly into the RM's "
                              f"(reward.path={cfg.reward.path})")
        if coverage < COVERAGE_WARNING:
            log.warning("only %.2f%% of the dLLM's tokens map exactly into the RM vocabulary; the rest reach the "
                        "RM as its unknown token (%s sets a floor)", 100 * coverage, key)
    prompts = fit_context(cfg, prompts, model, rewards)
    check_reward_prompts(cfg, prompts)
    check_judges(cfg.evaluator, prompts)
    return prompts


def check_model(node: DictConfig, model: Checkpoint) -> None:
    """The dLLM's backbone is a transformers causal-LM class (its causal flag is turned off at load) and its
    mask, EOS and stop tokens resolve (`special_tokens`), from its config.json and tokenizer alone; else
    ConfigError naming the key. Applies `model.chat_template` to the checked tokenizer, as loading will."""
    if str(node.backbone) not in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        raise ConfigError(f"model.backbone={node.backbone!r} is not a transformers causal-LM class "
                          "(e.g. Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM)")
    if node.get("chat_template"):
        model.tokenizer.chat_template = node.chat_template
    special_tokens(node, model.config, model.tokenizer)


def check_remote_code(node: DictConfig, key: str) -> None:
    """A reward model whose config.json needs its own Python code (an `auto_map`, or a model type transformers
    does not know) runs only with `<key>.trust_remote_code=true`; else ConfigError naming that key."""
    try:
        config = json.loads((resolve_checkpoint(node.path, f"{key}.path") / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # check_checkpoint names what is wrong with the file
    if not isinstance(config, dict) or node.get("trust_remote_code", False):
        return
    model_type = config.get("model_type")
    why = ("its config.json has an auto_map" if config.get("auto_map")
           else f"model_type {model_type!r} is not one transformers knows"
           if model_type not in transformers.CONFIG_MAPPING else None)
    if why is not None:
        raise ConfigError(f"{key}.trust_remote_code=false: {key}.path={node.path} needs the checkpoint's own code "
                          f"({why}); set {key}.trust_remote_code=true if you trust it")


def check_reward_checkpoint(checkpoint: Checkpoint, node: DictConfig, key: str) -> None:
    """A reward model's tokenizer has a chat template, and a classifier (`RewardModel` proper) has one label."""
    if not getattr(checkpoint.tokenizer, "chat_template", None):
        raise ConfigError(f"{key}.path={node.path}: the tokenizer has no chat template to render a conversation")
    if get_class(node._target_).reads_tokens:
        return
    labels = checkpoint.config.get("num_labels", len(checkpoint.config.get("id2label") or {0: ""}))
    if labels != 1:
        raise ConfigError(f"{key}.path={node.path}: a reward classifier has one output, this one has {labels} labels")


@dataclass
class _Context:
    name: str  # "dLLM", "RM", "RM reward.rewards.rm"
    limit: int | None
    tokenizer: Any
    new_tokens: int  # the response region, beside the prompt in its chat template
    rm: bool  # a reward model: the prompt in its template with the response; else the dLLM's prompt encoding
    template_kwargs: Mapping[str, Any] | None = None  # the dLLM's `model.chat_template_kwargs`

    def need(self, text: str) -> int:
        if self.rm:
            prefix, suffix = template_parts(self.tokenizer, text)
            return len(prefix) + len(suffix) + self.new_tokens
        return len(encode_prompt(self.tokenizer, text, self.template_kwargs)) + self.new_tokens


def fit_context(cfg: DictConfig, prompts: list[Prompt], model: Checkpoint,
                rewards: Mapping[str, Checkpoint]) -> list[Prompt]:
    """Every prompt in its chat template plus `sampler.max_new_tokens` must fit `max_position_embeddings`
    of the dLLM and of each reward model (`rewards`, by key; none for a text scorer): refused
    (`benchmark.truncate=none`) or cut from the left (`left`)."""
    new_tokens = int(cfg.sampler.max_new_tokens)
    contexts = [_Context("dLLM", model.config.get("max_position_embeddings"), model.tokenizer, new_tokens, False,
                         cfg.model.get("chat_template_kwargs"))]
    contexts += [_Context("RM" if key == "reward" else f"RM {key}", rm.config.get("max_position_embeddings"),
                          rm.tokenizer, new_tokens, True) for key, rm in rewards.items()]
    if all(c.limit is None for c in contexts):
        return prompts
    truncate = OmegaConf.select(cfg, "benchmark.truncate", default=Truncate.none)
    limits = f"limits: {', '.join(f'{c.name} {c.limit}' for c in contexts)} positions"
    fitted, cut = [], 0
    for prompt in prompts:
        text = prompt.text
        for _ in range(8):  # each cut is exact for one tokenizer; another may need one more
            needs = [c.need(text) for c in contexts]
            excess = [n - c.limit if c.limit else 0 for n, c in zip(needs, contexts, strict=True)]
            if max(excess) <= 0:
                break
            if truncate != Truncate.left:
                where = " and ".join(f"{n}{' positions' if i == 0 else ''} in the {c.name}"
                                     for i, (n, c) in enumerate(zip(needs, contexts, strict=True)))
                raise ConfigError(
                    f"benchmark.truncate=none: prompt {prompt.id!r} needs {where} with "
                    f"sampler.max_new_tokens={new_tokens} ({limits}); shorten it, "
                    "lower sampler.max_new_tokens, or set benchmark.truncate=left")
            worst = contexts[excess.index(max(excess))]
            offsets = worst.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if max(excess) >= len(offsets):
                raise ConfigError(f"sampler.max_new_tokens={new_tokens} leaves no room for prompt {prompt.id!r} "
                                  f"in the {worst.name} ({limits}), even with benchmark.truncate=left")
            text = text[offsets[max(excess)][0]:]
        else:
            raise ConfigError(f"benchmark.truncate=left could not fit prompt {prompt.id!r} ({limits})")
        cut += text != prompt.text
        fitted.append(prompt if text == prompt.text else replace(prompt, text=text))
    if cut:
        log.warning("benchmark.truncate=left: cut the start of %d of %d prompts to fit (%s)", cut, len(prompts), limits)
    return fitted


def check_reward_prompts(cfg: DictConfig, prompts: list[Prompt]) -> None:
    """Each text scorer of `reward` can score responses to these prompts (asked of its class: nothing loads)."""
    pairs = [(p.id, p.text) for p in prompts]
    for key, node in reward_nodes(cfg):
        scorer = get_class(node._target_)
        why = scorer.check_prompts(pairs) if issubclass(scorer, TextScorer) else None
        if why is not None:
            name = _option("reward", node) if key == "reward" else key
            raise ConfigError(f"{name} cannot score this benchmark: {why}; choose another reward")


def check_judges(node: Mapping[str, Any] | None, prompts: list[Prompt]) -> None:
    """Each judge of `evaluator` can score responses to these prompts (asked of its class: nothing loads)."""
    pairs = [(p.id, p.text) for p in prompts]
    for option, config in (node or {}).items():
        why = get_class(config._target_).check_prompts(pairs)
        if why is not None:
            raise ConfigError(f"evaluator={option} cannot judge this benchmark: {why}; leave it out of evaluator=[...]")
