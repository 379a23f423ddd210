"""The paper's figures from grouped runs (matplotlib's object API on the Agg canvas; no pyplot).

Sized for a two-column paper: full-width figures are 6.75 in wide, single-column ones
3.25 in, with 7–8 pt text at 300 dpi, so they stay legible when placed at that size.

Each function draws one figure for one benchmark's rows, writes a PNG and returns its path,
or returns None when the runs hold nothing to draw (e.g. no guided method, M never varied).
Curves average the batches of a run, then show the mean over seeds with a ±SEM band.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator, NullLocator

from entrgi.reporting.runs import Run
from entrgi.reporting.table import Row, Stat, Table, model_size

FULL_WIDTH, COLUMN_WIDTH = 6.75, 3.25  # inches
STYLE = {
    "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.4, "lines.markersize": 4,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "savefig.dpi": 300, "savefig.bbox": "tight", "legend.frameon": False,
}
# The methods' colours stay fixed across figures; other rows take the next colours in turn.
METHOD_COLOURS = {"none": "#7f7f7f", "soft": "#1f77b4", "aps": "#d62728", "entrgi": "#2ca02c"}
OTHER_COLOURS = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
STEP_PANELS = (  # (statistic in steps.jsonl, y label)
    ("entropy_mean", "mean entropy $H^l$ (nats)"),
    ("E_mean", "mean $E^l=\\|\\hat e^l-\\tilde e^l\\|_2$"),
    ("D_mean", "mean $D^l=\\|\\hat e^l-\\bar e^l\\|_2$"),
)
STEP_AXIS = "denoising step"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "all"


def _colours(rows: list[Row]) -> dict[int, str]:
    others = iter(OTHER_COLOURS * (len(rows) // len(OTHER_COLOURS) + 1))
    taken: set[str] = set()
    out = {}
    for row in rows:
        colour = METHOD_COLOURS.get(row.method)
        if colour is None or colour in taken:  # several rows of one method: tell them apart
            colour = next(others)
        taken.add(colour)
        out[id(row)] = colour
    return out


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path)
    return path


def _seed_band(per_seed: list[dict[Any, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x values present in every seed, mean over seeds, SEM over seeds (0 with one seed)."""
    xs = sorted(set.intersection(*(set(curve) for curve in per_seed)))
    values = np.array([[curve[x] for x in xs] for curve in per_seed], dtype=float)
    sem = values.std(axis=0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else np.zeros(len(xs))
    return np.array(xs, dtype=float), values.mean(axis=0), sem


def _per_step(run: Run, value: Callable[[dict], float | None]) -> dict[int, float]:
    """Mean over the run's batches (and shards) of value(row) at each denoising step (1-based)."""
    sums: dict[int, list[float]] = {}
    for row in run.steps:
        v = value(row)
        if v is not None:
            sums.setdefault(int(row["step"]) + 1, []).append(v)
    return {step: float(np.mean(vs)) for step, vs in sums.items()}


def _band(ax, x, mean, sem, colour, label, marker=None) -> None:
    ax.plot(x, mean, color=colour, label=label, marker=marker)
    if np.any(sem > 0):
        ax.fill_between(x, mean - sem, mean + sem, color=colour, alpha=0.2, linewidth=0)


def _band_note(rows: list[Row]) -> str:
    return "; ±SEM over seeds" if any(len(row.runs) > 1 for row in rows) else ""


def _legend(figure: Figure, axes, n: int) -> None:
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(n, 4))


def step_statistics(table: Table, rows: list[Row], path: Path, title: str) -> Path | None:
    """The paper's Figure 2: mean entropy, E^l and D^l of the masked positions vs denoising step."""
    drawn = [(row, {key: [_per_step(run, lambda r, k=key: r.get(k)) for run in row.runs]
                    for key, _ in STEP_PANELS}) for row in rows]
    drawn = [(row, curves) for row, curves in drawn if all(all(c) for c in curves.values())]
    if not drawn:
        return None
    colours = _colours([row for row, _ in drawn])
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(FULL_WIDTH, 2.3), layout="constrained")
        axes = figure.subplots(1, len(STEP_PANELS), sharex=True)
        for ax, (key, ylabel) in zip(axes, STEP_PANELS, strict=True):
            for row, curves in drawn:
                _band(ax, *_seed_band(curves[key]), colours[id(row)], table.label(row))
            ax.set_xlabel(STEP_AXIS)
            ax.set_ylabel(ylabel)
        figure.suptitle(f"{title}: masked positions during guidance "
                        f"(mean over positions and batches{_band_note(rows)})", fontsize=8)
        _legend(figure, axes[0], len(drawn))
        return _save(figure, path)


def entropy_error_heatmaps(table: Table, rows: list[Row], path: Path, title: str) -> Path | None:
    """The paper's Figure 3: joint distribution of entropy and E^l over masked positions, per method."""
    panels = []
    for row in rows:
        histograms = [run.histogram for run in row.runs if run.histogram is not None]
        if histograms:
            counts = np.sum([np.asarray(h["counts"], dtype=float) for h in histograms], axis=0)
            if counts.sum() > 0:
                h = histograms[0]
                panels.append((row, np.asarray(h["entropy_edges"]), np.asarray(h["error_edges"]),
                               counts / counts.sum()))
    if not panels:
        return None
    # One colour scale and one visible region (the occupied bins, plus a margin) for all panels.
    positive = np.concatenate([c[c > 0] for *_, c in panels])
    norm = LogNorm(vmin=positive.min(), vmax=positive.max())
    x_top = max(ent[np.nonzero(c.any(axis=1))[0].max() + 1] for _, ent, _, c in panels)
    y_top = max(err[np.nonzero(c.any(axis=0))[0].max() + 1] for _, _, err, c in panels)
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        figure = Figure(figsize=(FULL_WIDTH * ncols / 4 + 0.6, 1.9 * nrows + 0.3), layout="constrained")
        axes = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
        for i, (ax, (row, ent, err, frac)) in enumerate(zip(axes, panels, strict=False)):
            mesh = ax.pcolormesh(ent, err, np.ma.masked_equal(frac.T, 0), norm=norm, cmap="viridis")
            ax.set_xlim(0, x_top * 1.05)
            ax.set_ylim(0, y_top * 1.05)
            ax.set_title(table.label(row))
            if i >= len(panels) - ncols:  # axis labels on the outer panels only
                ax.set_xlabel("entropy $H^l$ (nats)")
            if i % ncols == 0:
                ax.set_ylabel("$E^l$ (L2 distance)")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        figure.colorbar(mesh, ax=list(axes[: len(panels)]), label="fraction of masked positions",
                        shrink=0.9 if nrows == 1 else 0.5)
        figure.suptitle(f"{title}: entropy vs approximation error $E^l$ (all guided steps)", fontsize=8)
        return _save(figure, path)


def _curve_mean(run: Run) -> dict[int, float]:
    curves = [row["reward_curve"] for row in run.steps if row.get("reward_curve")]
    if not curves:
        return {}
    length = min(len(c) for c in curves)
    return {i + 1: float(v) for i, v in enumerate(np.mean([c[:length] for c in curves], axis=0))}


def reward_curves(table: Table, rows: list[Row], path: Path, title: str) -> Path | None:
    """Relaxed RM score over the M Adam iterations, and its gain (last − first) at each denoising step."""
    drawn = [(row, [_curve_mean(run) for run in row.runs],
              [_per_step(run, lambda r: r["reward_curve"][-1] - r["reward_curve"][0]
                         if r.get("reward_curve") else None) for run in row.runs]) for row in rows]
    drawn = [d for d in drawn if all(d[1]) and all(d[2])]
    if not drawn:
        return None
    colours = _colours([row for row, *_ in drawn])
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(FULL_WIDTH, 2.4), layout="constrained")
        left, right = figure.subplots(1, 2)
        for row, per_iteration, per_step in drawn:
            _band(left, *_seed_band(per_iteration), colours[id(row)], table.label(row), marker="o")
            _band(right, *_seed_band(per_step), colours[id(row)], table.label(row))
        left.set_xlabel("Adam iteration")
        left.set_ylabel("relaxed RM score (reward units)")
        left.set_title("mean over denoising steps")
        left.xaxis.get_major_locator().set_params(integer=True)
        right.set_xlabel(STEP_AXIS)
        right.set_ylabel("score gain, last − first iteration")
        right.set_title("gain at each denoising step")
        right.axhline(0, color="black", linewidth=0.6)
        figure.suptitle(f"{title}: reward of the relaxed input during guidance "
                        f"(mean over batches{_band_note(rows)})", fontsize=8)
        _legend(figure, left, len(drawn))
        return _save(figure, path)


MARKERS, DASHES = ("o", "s", "^", "D", "v", "P"), ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Metric:
    """What a `_versus` figure puts on the y axis: a row's Stat (None: the row has no value)."""

    stat_of: Callable[[Row], Stat | None]
    label: str


TOP1 = Metric(lambda row: row.top1, "Top@1 (RM score, mean ± SEM)")


def judge_metric(name: str) -> Metric:
    """A judge's score of the Top@1 response."""
    return Metric(lambda row: row.judge(name), f"{name} of the Top@1 response (mean ± SEM)")


def _versus(rows: list[Row], path: Path, title: str, x_of: Callable[[Row], Any],
            variant_of: Callable[[Row], str], xlabel: str, log_x: bool = False,
            tick_label: Callable[[Any], str] = str, metric: Metric = TOP1) -> Path | None:
    """metric ± SEM against x_of(row): colour = method, marker and dash = variant (e.g. reward model)."""
    series: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if x_of(row) is not None and metric.stat_of(row) is not None:
            series.setdefault((row.method, variant_of(row)), []).append(row)
    series = {key: members for key, members in series.items() if len({x_of(r) for r in members}) > 1}
    if not series:
        return None
    firsts = list({members[0].method: members[0] for members in series.values()}.values())
    method_colour = {row.method: colour for row, colour in zip(firsts, _colours(firsts).values(), strict=True)}
    variants = sorted({variant for _, variant in series})
    xs_all = sorted({x_of(r) for members in series.values() for r in members})
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(COLUMN_WIDTH + (1.4 if len(series) > 1 else 0), 2.4), layout="constrained")
        ax = figure.subplots()
        for (method, variant), members in series.items():
            members.sort(key=x_of)
            v = variants.index(variant)
            stats = [metric.stat_of(r) for r in members]
            ax.errorbar([x_of(r) for r in members], [stat.mean for stat in stats],
                        yerr=[stat.sem or 0.0 for stat in stats], capsize=2, color=method_colour[method],
                        marker=MARKERS[v % len(MARKERS)], linestyle=DASHES[v % len(DASHES)],
                        label=f"{method} {variant}".strip())
        if log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs_all, [tick_label(x) for x in xs_all])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric.label)
        ax.set_title(title)
        if len(series) > 1:
            figure.legend(loc="outside right upper")
        return _save(figure, path)


def top1_vs_M(table: Table, rows: list[Row], path: Path, title: str, metric: Metric = TOP1) -> Path | None:
    """The paper's Figure 5: Top@1 (or a judge's score) against the number of Adam iterations M, one line per method."""
    def variant(row: Row) -> str:
        return " ".join(filter(None, [table.reward_label(row) if table.varies_reward else "", row.settings_text]))
    return _versus(rows, path, title, lambda r: r.M, variant, "Adam iterations per denoising step $M$",
                   metric=metric)


def top1_vs_reward_model(table: Table, rows: list[Row], path: Path, title: str,
                         metric: Metric = TOP1) -> Path | None:
    """The paper's Figure 4: Top@1 (or a judge's score) against the guiding reward model's size, one line per method."""
    def variant(row: Row) -> str:
        m = f"M={row.M}" if table.varies_M and row.M is not None else ""
        return " ".join(filter(None, [m, row.settings_text]))
    sizes = {row.reward_model: model_size(row.reward_model) for row in rows}
    if None not in sizes.values():
        return _versus(rows, path, title, lambda r: sizes[r.reward_model], variant,
                       "reward model size (billion parameters)", log_x=True, tick_label=lambda x: f"{x:g}B",
                       metric=metric)
    names = sorted(sizes)  # sizes unknown: one tick per model, in name order
    return _versus(rows, path, title, lambda r: names.index(r.reward_model), variant, "reward model",
                   tick_label=lambda i: table.reward_label_of(names[i]), metric=metric)


def _best_of_n(row: Row) -> bool:
    """Plain sampling (`guidance=none`): its Top@1 is Best-of-N at the row's K."""
    return str(row.runs[0].flat_config.get("guidance._target_", "")).endswith("NoGuidance")


def reward_vs_compute(table: Table, rows: list[Row], path: Path, title: str) -> Path | None:
    """Reward against estimated FLOPs per prompt (`entrgi.compute`), one point per row (mean ± SEM over seeds).

    Best-of-N rows (`guidance=none`, one per K) are joined as a line, the frontier a method must beat
    at equal compute (one line per reward model and other setting when these vary). One panel for the
    RM's Top@1, and one per judge that scored these runs (the toy oracle, LMUnit, a held-out RM).
    None when fewer than two rows have compute.
    """
    placed = sorted((row for row in rows if row.flops_per_prompt is not None), key=lambda r: r.flops_per_prompt.mean)
    if len(placed) < 2:
        return None
    metrics = [TOP1, *(Metric(lambda row, n=name: row.judge(n), f"{name}, Top@1 response (mean ± SEM)")
                       for name in table.judges if any(row.judge(name) for row in placed))]
    frontiers: dict[str, list[Row]] = {}
    for row in placed:
        if _best_of_n(row):
            variant = [table.reward_label(row)] if table.varies_reward else []
            variant += [f"{key}={value}" for key, value in row.settings if key != "sampler.num_samples"]
            frontiers.setdefault(" ".join(["Best-of-N", *variant]), []).append(row)
    others = [row for row in placed if not _best_of_n(row)]
    colours = _colours(others)
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(min(FULL_WIDTH, COLUMN_WIDTH * len(metrics)), 2.8), layout="constrained")
        axes = figure.subplots(1, len(metrics), sharex=True, squeeze=False)[0]
        for ax, metric in zip(axes, metrics, strict=True):
            for v, (label, members) in enumerate(frontiers.items()):
                line = [(row.flops_per_prompt.mean, row, stat) for row in members
                        if (stat := metric.stat_of(row)) is not None]
                if not line:
                    continue
                ax.errorbar([x for x, *_ in line], [stat.mean for *_, stat in line],
                            yerr=[stat.sem or 0.0 for *_, stat in line], color=METHOD_COLOURS["none"],
                            marker="o", linestyle=DASHES[v % len(DASHES)], capsize=2, label=label)
                for x, row, stat in line:
                    ax.annotate(f"K={row.num_samples}", (x, stat.mean), textcoords="offset points", xytext=(4, -3),
                                fontsize=6, color=METHOD_COLOURS["none"], va="top")
            for i, row in enumerate(others):
                stat = metric.stat_of(row)
                if stat is not None:
                    ax.errorbar([row.flops_per_prompt.mean], [stat.mean], yerr=[stat.sem or 0.0], capsize=2,
                                color=colours[id(row)], marker=MARKERS[i % len(MARKERS)], linestyle="none",
                                label=table.label(row))
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(EngFormatter(places=0, sep=" "))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.margins(x=0.08, y=0.12)
            ax.set_xlabel("FLOP per prompt (estimate, all K samples)")
            ax.set_ylabel(metric.label)
        figure.suptitle(f"{title}: reward against compute (a point per method and setting{_band_note(placed)})",
                        fontsize=8)
        _legend(figure, axes[0], len(others) + len(frontiers))
        return _save(figure, path)


FIGURES = (  # (file stem, function)
    ("steps_entropy_error", step_statistics),
    ("heatmap_entropy_error", entropy_error_heatmaps),
    ("reward_curves", reward_curves),
    ("top1_vs_M", top1_vs_M),
    ("top1_vs_reward_model", top1_vs_reward_model),
    ("reward_vs_compute", reward_vs_compute),
)


# A judge's score against M and against the reward model (paper Figs. 4–5, LMUnit panels).
JUDGE_FIGURES = (("vs_M", top1_vs_M), ("vs_reward_model", top1_vs_reward_model))


def write_figures(table: Table, out_dir: Path) -> list[Path]:
    """Every figure the rows support, one file per figure and benchmark, under `out_dir`."""
    written = []
    for benchmark in table.benchmarks:
        rows = [row for row in table.rows if row.benchmark == benchmark]
        for stem, draw in FIGURES:
            written.append(draw(table, rows, Path(out_dir) / f"{stem}_{_slug(benchmark)}.png", benchmark))
        for name in table.judges:
            for stem, draw in JUDGE_FIGURES:
                path = Path(out_dir) / f"{_slug(name)}_{stem}_{_slug(benchmark)}.png"
                written.append(draw(table, rows, path, benchmark, metric=judge_metric(name)))
    return [path for path in written if path is not None]


def run_figures(run: Run, out_dir: Path) -> list[Path]:
    """The figures of a single run (for its W&B page): per-step statistics, heat-map, reward curves."""
    row = Row(run.benchmark, run.method, run.reward_model, run.M, (), [run])
    table = Table([row], [])
    title = f"{run.benchmark} · {run.method} · seed {run.seed}"
    written = []
    for stem, draw in FIGURES[:3]:
        path = draw(table, [row], Path(out_dir) / f"{stem}.png", title)
        if path is not None:
            written.append(path)
    return written
