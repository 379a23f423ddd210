"""`python -m entrgi.report`: finding runs, exact mean ± SEM, refusals, and every figure (issue 5)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from entrgi.experiment import run_experiment
from entrgi.report import main
from entrgi.reporting.runs import collect_runs, load_run, merge_shards
from entrgi.reporting.table import build_rows

RM_SMALL, RM_LARGE = "/models/Skywork-Reward-V2-Qwen3-0.6B", "/models/Skywork-Reward-V2-Qwen3-4B"


def write_run(path: Path, *, method="aps", seed=1, top1=1.0, avgk=0.5, prompt_ids=("p0", "p1"), M=3,
              reward=RM_SMALL, benchmark="bench", finished=True, temperature=0.7, extra_benchmark=None,
              num_samples=2, flops_per_prompt=None, oracle=None) -> Path:
    """A run directory in the layout entrgi.run_directory writes, with chosen numbers (`flops_per_prompt`: its
    compute accounting; `oracle`: the oracle judge's score of every Top@1 response)."""
    path.mkdir(parents=True)
    guided = method != "none"
    config = {
        "model": {"path": "/models/Dream-v0-Instruct-7B", "device": "cuda"},
        "reward": {"path": reward, "device": "cuda", "batch_size": 8},
        "guidance": {"rule": method, "M": M, "eta": 0.5} if guided else {"_target_": "NoGuidance"},
        "schedule": {"steps": 4},
        "benchmark": {"name": benchmark, "n_prompts": len(prompt_ids), **(extra_benchmark or {})},
        "logger": {"mode": "offline", "group": method},
        "sampler": {"num_samples": num_samples, "batch_size": 1, "temperature": temperature},
        "seed": seed,
        "name": method,
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "run.json").write_text(json.dumps({"seed": seed, "prompt_ids": list(prompt_ids)}))
    with open(path / "samples.jsonl", "w") as f:
        for pid in prompt_ids:
            f.write(json.dumps({"prompt_id": pid, "prompt": "q", "responses": ["a", "b"],
                                "rewards": [top1, 2 * avgk - top1], "best_index": 0, "top1": top1,
                                "avgk": avgk}) + "\n")
    with open(path / "steps.jsonl", "w") as f:
        for step in range(4):
            row = {"batch": 0, "step": step, "t": 1 - step / 4, "s": 1 - (step + 1) / 4, "masked": 4.0 - step}
            if guided:
                row.update(entropy_mean=2.0 - 0.1 * step + 0.01 * seed, w_mean=0.5, E_mean=0.1 * seed,
                           D_mean=0.2, reward_curve=[top1 - 0.2 + 0.1 * i for i in range(M)])
            f.write(json.dumps(row) + "\n")
    if guided:
        counts = [[0] * 4 for _ in range(4)]
        counts[1][2], counts[3][0] = 5 * seed, 3
        (path / "entropy_error_histogram.json").write_text(json.dumps(
            {"entropy_edges": [0, 1, 2, 3, 4], "error_edges": [0, 0.5, 1, 1.5, 2], "counts": counts}))
    if oracle is not None:
        (path / "judgements").mkdir()
        (path / "judgements" / "oracle.jsonl").write_text("".join(
            json.dumps({"prompt_id": pid, "indices": [0], "scores": [oracle], "top1": oracle}) + "\n"
            for pid in prompt_ids))
    if finished:
        compute = None if flops_per_prompt is None else {"flops": flops_per_prompt * len(prompt_ids)}
        (path / "summary.json").write_text(json.dumps({
            "top1_mean": top1, "avgk_mean": avgk, "n_prompts": len(prompt_ids), "num_samples": num_samples,
            "guidance": method, "benchmark": benchmark, "seed": seed, "wall_seconds": 10.0 * seed,
            "compute": compute}))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """aps × 3 seeds, entrgi × 2 seeds, none × 1 seed, plus one job that never finished."""
    root = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    for i, (method, seed, top1, avgk) in enumerate([
        ("aps", 1, 1.0, 0.1), ("aps", 2, 2.0, 0.2), ("aps", 3, 4.0, 0.6),
        ("entrgi", 1, 3.0, 0.2), ("entrgi", 2, 5.0, 0.3), ("none", 1, 0.5, 0.25),
    ]):
        write_run(root / str(i), method=method, seed=seed, top1=top1, avgk=avgk)
    write_run(root / "6", method="entrgi", seed=3, top1=100.0, avgk=100.0, finished=False)
    return root


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_table_means_and_sems_are_exact(sweep, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--no-figures"]) == 0
    rows = _csv(tmp_path / "out" / "table.csv")
    assert list(rows) == ["none", "aps", "entrgi"]  # the paper's order
    aps, entrgi, none = rows["aps"], rows["entrgi"], rows["none"]
    assert float(aps["top1_mean"]) == pytest.approx(7 / 3)
    assert float(aps["top1_sem"]) == pytest.approx(math.sqrt(7) / 3)  # sd² = 7/3, n = 3
    assert float(aps["avgk_mean"]) == pytest.approx(0.3)
    assert float(aps["avgk_sem"]) == pytest.approx(math.sqrt(0.07 / 3))
    assert float(entrgi["top1_mean"]) == pytest.approx(4.0) and float(entrgi["top1_sem"]) == pytest.approx(1.0)
    assert float(entrgi["avgk_mean"]) == pytest.approx(0.25) and float(entrgi["avgk_sem"]) == pytest.approx(0.05)
    assert none["top1_sem"] == "" and float(none["top1_mean"]) == 0.5
    assert (aps["n_seeds"], aps["seeds"], aps["n_prompts"]) == ("3", "1 2 3", "2")
    assert entrgi["n_seeds"] == "2"  # the unfinished seed 3 (Top@1 100) is not averaged in
    assert (entrgi["top1_best"], aps["top1_best"], aps["avgk_best"], entrgi["avgk_best"]) == (
        "True", "False", "True", "False")

    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| Benchmark | Method | Top@1 | Avg@2 | Seeds | Prompts |" in markdown
    assert "| bench | aps | 2.3333 ± 0.8819 | **0.3000 ± 0.1528** | 3 | 2 |" in markdown
    assert "| bench | entrgi | **4.0000 ± 1.0000** | 0.2500 ± 0.0500 | 2 | 2 |" in markdown
    assert "| bench | none | 0.5000 | 0.2500 | 1 | 2 |" in markdown
    printed = capsys.readouterr().out
    assert f"incomplete, left out: {(sweep / '6').resolve()}: no summary.json (2 of 2 prompts written)" in printed
    assert "6 runs in 3 rows (1 incomplete left out)" in printed
    assert "4.0000 ± 1.0000 *" in printed


def test_different_prompt_slices_in_one_row_are_refused(tmp_path, capsys):
    write_run(tmp_path / "a", seed=1, prompt_ids=("p0", "p1"))
    write_run(tmp_path / "b", seed=2, prompt_ids=("p0", "p7"))
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "row bench / aps mixes different prompt slices" in error
    assert "seed 2" in error and "p7" in error and "benchmark.n_prompts" in error
    assert not (tmp_path / "out" / "table.md").exists()


def test_only_incomplete_runs_or_nothing_is_an_error(tmp_path, capsys):
    write_run(tmp_path / "a", finished=False)
    assert main([str(tmp_path / "a")]) == 2
    assert "has finished" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing-*")]) == 2
    assert "matches nothing" in capsys.readouterr().err


def test_rows_split_by_reward_model_M_and_other_settings(tmp_path):
    for i, (method, reward, m, seed, top1) in enumerate([
        ("aps", RM_SMALL, 3, 1, 1.0), ("aps", RM_SMALL, 3, 2, 3.0), ("aps", RM_SMALL, 1, 1, 0.5),
        ("aps", RM_LARGE, 3, 1, 2.0), ("entrgi", RM_SMALL, 3, 1, 1.5), ("entrgi", RM_LARGE, 3, 1, 2.5),
        ("entrgi", RM_SMALL, 5, 1, 1.2),
    ]):
        write_run(tmp_path / f"run-{i}", method=method, reward=reward, M=m, seed=seed, top1=top1)
    write_run(tmp_path / "hot", method="none", temperature=1.0)
    write_run(tmp_path / "cold", method="none", temperature=0.7)
    found = collect_runs([str(tmp_path / "run-*"), str(tmp_path / "hot"), str(tmp_path / "cold" / "summary.json")])
    table = build_rows(found.runs)
    assert table.varies_reward and table.varies_M and table.has_settings
    keys = [(r.method, r.reward_model, r.M, r.settings_text, len(r.runs)) for r in table.rows]
    assert keys == [
        ("none", "Skywork-Reward-V2-Qwen3-0.6B", None, "sampler.temperature=0.7", 1),
        ("none", "Skywork-Reward-V2-Qwen3-0.6B", None, "sampler.temperature=1.0", 1),
        ("aps", "Skywork-Reward-V2-Qwen3-0.6B", 1, "", 1),
        ("aps", "Skywork-Reward-V2-Qwen3-0.6B", 3, "", 2),
        ("aps", "Skywork-Reward-V2-Qwen3-4B", 3, "", 1),
        ("entrgi", "Skywork-Reward-V2-Qwen3-0.6B", 3, "", 1),
        ("entrgi", "Skywork-Reward-V2-Qwen3-0.6B", 5, "", 1),
        ("entrgi", "Skywork-Reward-V2-Qwen3-4B", 3, "", 1),
    ]
    assert "| Benchmark | Method | Reward model | M | Settings | Top@1 |" in table.markdown()

    from entrgi.reporting.figures import write_figures

    written = {p.name for p in write_figures(table, tmp_path / "figures")}
    assert written == {f"{stem}_bench.png" for stem in (
        "steps_entropy_error", "heatmap_entropy_error", "reward_curves", "top1_vs_M", "top1_vs_reward_model")}
    for name in written:
        path = tmp_path / "figures" / name
        assert path.stat().st_size > 10_000
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 300


def test_reruns_and_shards(tmp_path):
    """The same run found twice: the newer is used. Shards (configs equal but for a shard key): merged."""
    old = write_run(tmp_path / "old", top1=1.0)
    new = write_run(tmp_path / "new", top1=2.0)
    os.utime(old / "summary.json", (1, 1))
    found = collect_runs([str(tmp_path)])
    assert [run.path for run in found.runs] == [new.resolve()]
    assert any("newer and is used" in note for note in found.notes)

    a = load_run(write_run(tmp_path / "s0", top1=1.0, avgk=0.5, prompt_ids=("p0", "p1"),
                           extra_benchmark={"part": 0, "n_prompts": 3}))
    b = load_run(write_run(tmp_path / "s1", top1=4.0, avgk=2.0, prompt_ids=("p2",),
                           extra_benchmark={"part": 1, "n_prompts": 3}))
    unmerged, _ = merge_shards([a, b])
    assert len(unmerged) == 2  # no shard keys configured: two different runs
    (merged,), notes = merge_shards([a, b], shard_keys=("benchmark.part",))
    assert merged.summary["top1_mean"] == pytest.approx((2 * 1.0 + 4.0) / 3)
    assert merged.summary["avgk_mean"] == pytest.approx((2 * 0.5 + 2.0) / 3)
    assert merged.summary["n_prompts"] == 3 and sorted(merged.prompt_ids) == ["p0", "p1", "p2"]
    assert merged.histogram["counts"][1][2] == 10 and len(merged.steps) == 8
    assert "merged 2 shards" in notes[0]


@pytest.fixture(scope="module")
def tiny_sweep(compose, tmp_path_factory) -> Path:
    """Real tiny jobs laid out as a Hydra sweep: aps × seeds 1, 2 and Best-of-N × seed 1."""
    root = tmp_path_factory.mktemp("sweep")
    small = ["experiment=tiny", "logger=none", "schedule.steps=4", "sampler.max_new_tokens=6",
             "benchmark.n_prompts=2", "sampler.num_samples=2"]
    for i, (method, seed) in enumerate([("aps", 1), ("aps", 2), ("none", 1)]):
        run_experiment(compose(small + [f"guidance={method}", f"seed={seed}"]), root / str(i))
    return root


def test_report_on_real_tiny_jobs(tiny_sweep, tmp_path, capsys):
    assert main([str(tiny_sweep), "--out", str(tmp_path / "out")]) == 0
    rows = _csv(tmp_path / "out" / "table.csv")
    summaries = {i: json.loads((tiny_sweep / str(i) / "summary.json").read_text()) for i in range(3)}
    top1 = [summaries[0]["top1_mean"], summaries[1]["top1_mean"]]
    assert float(rows["aps"]["top1_mean"]) == pytest.approx(sum(top1) / 2)
    assert float(rows["aps"]["top1_sem"]) == pytest.approx(abs(top1[0] - top1[1]) / 2)  # n = 2: |a − b| / 2
    assert rows["aps"]["n_prompts"] == "2" and rows["none"]["n_seeds"] == "1"
    assert not any((tiny_sweep / str(i) / "wandb").exists() for i in range(3))  # logger=none logs nothing
    flops = [summaries[i]["compute"]["flops"] / summaries[i]["n_prompts"] for i in range(3)]
    assert float(rows["aps"]["flops_per_prompt_mean"]) == pytest.approx((flops[0] + flops[1]) / 2)
    assert float(rows["none"]["flops_per_prompt_mean"]) == pytest.approx(flops[2])
    assert flops[2] < min(flops[:2])  # Best-of-N at equal K spends less than aps
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert figures == ["heatmap_entropy_error_tiny.png", "reward_curves_tiny.png", "reward_vs_compute_tiny.png",
                       "steps_entropy_error_tiny.png"]
    printed = capsys.readouterr().out
    assert "3 runs in 2 rows (0 incomplete left out)" in printed and "wrote 4 figures" in printed


def test_compute_column_and_reward_vs_compute_figure(tmp_path, capsys):
    """Best-of-N at K = 2, 4, 8 (the frontier), two guided methods; FLOPs per prompt in one unit; oracle panel."""
    for i, (method, k, seed, top1, flops) in enumerate([
        ("none", 2, 1, 0.5, 2e9), ("none", 4, 1, 0.6, 4e9), ("none", 8, 1, 0.7, 8e9), ("none", 8, 2, 0.8, 8e9),
        ("entrgi", 2, 1, 0.9, 30e9), ("entrgi", 2, 2, 1.0, 32e9), ("fk", 4, 1, 0.65, 5e9),
    ]):
        write_run(tmp_path / f"run-{i}", method=method, num_samples=k, seed=seed, top1=top1, flops_per_prompt=flops,
                  oracle=top1 / 2)
    write_run(tmp_path / "old", method="aps", top1=0.3)  # made before compute was accounted
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    rows = {(row["method"], row["settings"]): row for row in csv.DictReader(open(tmp_path / "out" / "table.csv"))}
    assert float(rows["entrgi", ""]["flops_per_prompt_mean"]) == pytest.approx(31e9)
    assert float(rows["none", "sampler.num_samples=8"]["flops_per_prompt_mean"]) == pytest.approx(8e9)
    assert rows["aps", ""]["flops_per_prompt_mean"] == ""
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| oracle | GFLOP/prompt | Seeds | Prompts |" in markdown
    assert "| bench | entrgi |  | **0.9500 ± 0.0500** |" in markdown
    assert "| **0.4750 ± 0.0250** | 31 | 2 | 2 |" in markdown  # the oracle's best; 31 GFLOP per prompt
    assert "| bench | aps |  | 0.3000 |" in markdown and "| – | – | 1 | 2 |" in markdown  # no oracle, no compute
    assert "| bench | none | sampler.num_samples=2 | 0.5000 |" in markdown and "| 0.2500 | 2 | 1 | 2 |" in markdown
    path = tmp_path / "out" / "figures" / "reward_vs_compute_bench.png"
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 300  # two panels: RM and oracle
    assert "reward_vs_compute_bench.png" in capsys.readouterr().out


def test_no_compute_figure_without_two_accounted_rows(tmp_path):
    from entrgi.reporting.figures import reward_vs_compute

    write_run(tmp_path / "a", method="none", flops_per_prompt=1e6)
    write_run(tmp_path / "b", method="aps")
    table = build_rows(collect_runs([str(tmp_path)]).runs)
    assert reward_vs_compute(table, table.rows, tmp_path / "figure.png", "bench") is None
    assert "FLOP/prompt" in table.markdown()  # the column, with – for the run without compute
