"""Judge scores as stored in a run directory, and the summary numbers made from them (pure).

`<run dir>/judgements/<name>.jsonl` holds one line per prompt of `samples.jsonl`, in its order:

    {"prompt_id": …, "indices": [k, …], "scores": [s | null, …], "top1": s | null,
     "avgk": s | null (responses=all only), "details": [{…}, …] (when the judge gives any)}

`indices` are the judged responses (the RM's best of K for `top1`, all K for `all`), `scores`
the judge's score of each (null: the judge failed on it), `top1` the score of the RM's best
response, `avgk` the mean over the K responses the judge could score. The summary numbers
(`summary_fields`) are means over prompts that leave failures out and count them instead;
the report computes them from these lines too, so shards of one run merge exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from entrgi.evaluators.base import Judgement

# Summary keys per evaluator: `<name>_<field>`.
FIELDS = ("top1_mean", "top1_n", "avgk_mean", "avgk_n", "judged", "failures")


def field_key(name: str, field: str) -> str:
    return f"{name}_{field}"


def judged_indices(record: dict[str, Any], responses: str) -> list[int]:
    """Which of a prompt's K responses an evaluator scores."""
    return list(range(len(record["responses"]))) if responses == "all" else [record["best_index"]]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def prompt_line(record: dict[str, Any], responses: str, judgements: Sequence[Judgement]) -> dict[str, Any]:
    """One prompt's line of judgements/<name>.jsonl from its samples.jsonl record and the judge's verdicts."""
    indices = judged_indices(record, responses)
    if len(indices) != len(judgements):
        raise ValueError(f"{len(judgements)} judgements for {len(indices)} responses of {record['prompt_id']}")
    scores = [j.score for j in judgements]
    line: dict[str, Any] = {"prompt_id": record["prompt_id"], "indices": indices, "scores": scores,
                            "top1": scores[indices.index(record["best_index"])]}
    if responses == "all":
        line["avgk"] = _mean(scores)
    if any(j.details for j in judgements):
        line["details"] = [j.details for j in judgements]
    return line


def summary_fields(name: str, lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`<name>_top1_mean` (over prompts whose best response was scored), its count `_top1_n`, the same
    for Avg@K when every response was judged, and how many responses were judged and failed."""
    top1 = [line["top1"] for line in lines if line["top1"] is not None]
    fields: dict[str, Any] = {"top1_mean": _mean(top1), "top1_n": len(top1)}
    if lines and all("avgk" in line for line in lines):
        avgk = [line["avgk"] for line in lines if line["avgk"] is not None]
        fields.update(avgk_mean=_mean(avgk), avgk_n=len(avgk))
    scores = [score for line in lines for score in line["scores"]]
    fields.update(judged=len(scores), failures=sum(score is None for score in scores))
    return {field_key(name, key): value for key, value in fields.items()}
