"""`python -m entrgi.report PATH… [--out DIR]`: the paper's table and figures from any set of runs.

PATHs are run directories, sweep directories (searched recursively) or globs. Writes
table.md, table.csv (with a column per judge that scored the runs, `entrgi.evaluate`) and the
figures (PNG) into --out (default: `report/` inside the only
PATH when it is a directory, else `./report`) and prints a short summary. Incomplete runs
are listed and left out; different prompt slices within one row stop the report (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from entrgi.reporting.runs import ReportError, collect_runs
from entrgi.reporting.table import build_rows


def _default_out(paths: list[str]) -> Path:
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0]) / "report"
    return Path("report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entrgi.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directory, sweep directory or glob")
    parser.add_argument("--out", type=Path, help="output folder (default: PATH/report for one directory)")
    parser.add_argument("--no-figures", action="store_true", help="write the table only")
    args = parser.parse_args(argv)
    out = args.out or _default_out(args.paths)
    try:
        found = collect_runs(args.paths)
        for item in found.incomplete:
            print(f"incomplete, left out: {item.path}: {item.reason}")
        if not found.runs:
            raise ReportError(f"none of the {len(found.incomplete)} run directories found has finished")
        table = build_rows(found.runs)
    except ReportError as error:
        print(f"entrgi.report: error: {error}", file=sys.stderr)
        return 2
    for note in found.notes + table.notes:
        print(f"note: {note}")

    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table.markdown())
    table.write_csv(out / "table.csv")
    figures = []
    if not args.no_figures:
        from entrgi.reporting.figures import write_figures  # matplotlib only when drawing

        figures = write_figures(table, out / "figures")

    n_runs = sum(len(row.runs) for row in table.rows)
    judges = f"; judges ({', '.join(table.judges)}): score of the Top@1 response" if table.judges else ""
    print(f"{n_runs} runs in {len(table.rows)} rows ({len(found.incomplete)} incomplete left out); "
          f"Top@1 / Avg@K: mean ± SEM over seeds, * best of its benchmark{judges}")
    print(table.console())
    print(f"wrote {out / 'table.md'}, {out / 'table.csv'}")
    if figures:
        print(f"wrote {len(figures)} figures in {out / 'figures'}: " + ", ".join(p.name for p in figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
