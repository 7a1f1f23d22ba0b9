"""Compare runs side by side: one row per metric, one column per experiment and method; then ACoL minus each.

Why: ``dvc metrics show`` shows one revision (one row per metric, a column per method), and ``dvc exp show``
puts every experiment on one row with each metric of each method in its own column
(``metrics/MaxBoxAccV2.json:acol``), beside every param and dependency: a table thousands of characters wide.
This reads the same numbers (``dvc exp show --json``) and turns that table around, so a handful of experiments
fit a terminal. Revisions from before the metrics stage (other metrics files) have no column.

    python -m acol.stages.compare                 # workspace and HEAD's experiments
    python -m acol.stages.compare -A              # every commit; any `dvc exp show` option passes through
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from acol.tracking.dvc_metrics import METRIC_NAMES, METRICS_DIR

__all__ = ["RunColumn", "acol_differences", "columns_from_exp_show", "main", "render"]

_METRICS_FILE = re.compile(rf"^{re.escape(METRICS_DIR)}/(?P<name>[^/]+)\.json$")


@dataclass
class RunColumn:
    """The metrics of one method in one experiment (or commit, or the workspace)."""

    experiment: str
    method: str
    metrics: dict[str, float]


def _rows(entries: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every row of ``dvc exp show --json``: commits and workspace, then the experiments under each."""
    for entry in entries:
        yield entry
        for experiment in entry.get("experiments") or []:
            yield from _rows(experiment.get("revs") or [])


def _label(row: dict[str, Any]) -> str:
    return str(row.get("name") or row.get("rev", "?"))[:12]


def columns_from_exp_show(entries: list[dict[str, Any]]) -> list[RunColumn]:
    """One column per (row, method) that has metrics; rows that failed or have none are skipped."""
    columns: list[RunColumn] = []
    for row in _rows(entries):
        by_method: dict[str, dict[str, float]] = {}
        for path, content in ((row.get("data") or {}).get("metrics") or {}).items():
            match = _METRICS_FILE.match(path)
            if match and isinstance(content, dict) and isinstance(content.get("data"), dict):
                for method, value in content["data"].items():  # one metric, a value per method
                    by_method.setdefault(method, {})[match["name"]] = value
        columns += [RunColumn(_label(row), method, values) for method, values in sorted(by_method.items())]
    return columns


def _cell(value: Any) -> str:
    return f"{value:g}" if _number(value) else "-"


def acol_differences(columns: list[RunColumn]) -> list[RunColumn]:
    """ACoL minus each other method of the same experiment, metric by metric (the method compared as
    ``acol-<method>``); experiments without ACoL give none."""
    acol = {c.experiment: c.metrics for c in columns if c.method == "acol"}
    return [
        RunColumn(
            c.experiment,
            f"acol-{c.method}",
            {
                k: acol[c.experiment][k] - v
                for k, v in c.metrics.items()
                if _number(acol[c.experiment].get(k))
            },
        )
        for c in columns
        if c.method != "acol" and c.experiment in acol
    ]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render(columns: list[RunColumn]) -> str:
    """The metrics table, then (where an experiment has ACoL and another method) ACoL's difference to each."""
    if not columns:
        return "no metrics found (run `dvc repro` or `dvc exp run` first)"
    differences = acol_differences(columns)
    if not differences:
        return _table(columns)
    note = "ACoL minus each method of the same experiment (errors: negative is ACoL better):"
    return "\n".join([_table(columns), "", note, _table(differences)])


def _table(columns: list[RunColumn]) -> str:
    """A plain-text table: experiment and method as a two-line header, one metric a line."""
    name_width = max(len(name) for name in METRIC_NAMES)
    cells = [[_cell(c.metrics.get(name)) for c in columns] for name in METRIC_NAMES]
    widths = [
        max(len(c.experiment), len(c.method), *(len(row[k]) for row in cells)) for k, c in enumerate(columns)
    ]
    lines = [
        " " * name_width + "".join(f"  {c.experiment:>{w}}" for c, w in zip(columns, widths, strict=True)),
        " " * name_width + "".join(f"  {c.method:>{w}}" for c, w in zip(columns, widths, strict=True)),
    ]
    for name, row in zip(METRIC_NAMES, cells, strict=True):
        lines.append(
            f"{name:<{name_width}}" + "".join(f"  {v:>{w}}" for v, w in zip(row, widths, strict=True))
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``dvc exp show --json`` (this interpreter's DVC) with the given options; print the table."""
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):  # dvc's own help is not JSON
        print(__doc__.strip())
        return 0
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        print(result.stderr.strip() or "dvc exp show failed", file=sys.stderr)
        return result.returncode
    print(render(columns_from_exp_show(json.loads(result.stdout))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
