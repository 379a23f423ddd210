"""Turning run directories into the paper's tables and figures (`python -m entrgi.report`).

* `runs`    — find run directories under any paths, load them, merge shards of one run;
* `table`   — group runs into rows (benchmark × method × …), mean ± SEM over seeds, render;
* `figures` — the paper's figures (matplotlib, Agg), for a whole report or for one run.
"""

from entrgi.reporting.runs import Incomplete, ReportError, Run, collect_runs, load_run
from entrgi.reporting.table import Row, build_rows

__all__ = ["Incomplete", "ReportError", "Row", "Run", "build_rows", "collect_runs", "load_run"]
