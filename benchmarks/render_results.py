"""Writes ``docs/benchmarks.md`` from the results files in ``benchmarks/results/``: nothing typed by hand.

Every benchmark writes ``benchmarks/results/<date>-<name>.json`` (see ``_results.write_result``). For each
benchmark name this shows the newest file only, with a link to it: older files stay as the history and are
not repeated. A file's ``summary`` is shown as text, its ``machine`` as one line (date, not time), and its
figures as tables. Two keys stay in the files only: ``note`` (how and under what conditions it was
measured) and ``superseded`` (earlier measurements kept for the record).

    python benchmarks/render_results.py [--results benchmarks/results] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Keys shown in a file's heading block, or not at all, rather than in its tables.
HEADER_KEYS = ("benchmark", "command", "machine", "summary")
HIDDEN_KEYS = ("note", "notes", "superseded")


def newest_results(results_dir: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``{benchmark name: (path, result)}`` of the newest file per name: by the date the file name starts
    with, then by the machine's date (a timestamp when ``_results.machine()`` wrote it)."""
    newest: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        name = result.get("benchmark") or path.stem[len("YYYY-MM-DD-") :]
        if name not in newest or _order_key(path, result) >= _order_key(*newest[name]):
            newest[name] = (path, result)
    return dict(sorted(newest.items()))


def _order_key(path: Path, result: dict[str, Any]) -> tuple[str, str]:
    return path.name[:10], str((result.get("machine") or {}).get("date", ""))


def _number(value: float) -> str:
    """Integers as they are; floats to 4 decimals (1 from 100 on), tiny ones in scientific notation."""
    if isinstance(value, int) or value == 0:
        return str(int(value))
    if abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{round(value, 1 if abs(value) >= 100 else 4):g}"


def _cell(value: Any) -> str:
    """A scalar, or a short list, as Markdown table text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, list):
        if not value:
            return "–"
        if all(isinstance(item, list) and len(item) == 2 for item in value):
            return ", ".join(f"{k}={_cell(v)}" for k, v in value)
        return ", ".join(_cell(item) for item in value) or "–"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (bool, int, float, str))
        or (isinstance(value, list) and all(not isinstance(item, dict) for item in value))
    )


def _is_record(value: Any) -> bool:
    """A flat mapping (every value a scalar): one table row."""
    return isinstance(value, dict) and all(_is_scalar(v) for v in value.values())


def _table(rows: list[dict[str, Any]], first: str | None = None, names: list[str] | None = None) -> list[str]:
    """A Markdown table with one row per record; ``first`` titles a leading column holding ``names``."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    header = ([first] if first else []) + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = ([names[i]] if first and names else []) + [_cell(row.get(key)) for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _render(mapping: dict[str, Any], level: int) -> list[str]:
    """Scalars in one two-column table; flat mappings with the same keys side by side (e.g. "peak" and
    "final"), a lone one as a two-column table; lists of flat mappings as tables; the rest recursively."""
    lines: list[str] = []
    scalars = [(key, value) for key, value in mapping.items() if _is_scalar(value)]
    if scalars:
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in scalars] + [""]
    done: set[str] = set()
    for key, value in mapping.items():
        if _is_scalar(value) or key in done:
            continue
        if _is_record(value) and value:
            group = [k for k, v in mapping.items() if _is_record(v) and v and list(v) == list(value)]
            done.update(group)
            lines.append(f"{'#' * level} {', '.join(group)}\n")
            if len(group) == 1:
                lines += ["| | value |", "|---|---|"]
                lines += [f"| {k} | {_cell(v)} |" for k, v in value.items()] + [""]
            else:
                lines += _table([mapping[k] for k in group], " ", group)
            continue
        lines.append(f"{'#' * level} {key}\n")
        if isinstance(value, list) and all(_is_record(item) for item in value):
            lines += _table(value)
        elif isinstance(value, dict) and all(v is None or _is_record(v) for v in value.values()):
            lines += _table([v or {} for v in value.values()], key, [str(k) for k in value])
        elif isinstance(value, dict):
            lines += _render(value, level + 1)
        else:
            lines += [_cell(json.dumps(value)), ""]
    return lines


def _machine_line(machine: dict[str, Any]) -> str:
    parts = [str(machine.get("date", "?"))[:10], str(machine.get("cpu", "CPU not recorded"))]
    if machine.get("cores"):
        parts.append(f"{machine['cores']} cores")
    parts.append(f"GPU: {machine['gpu']}" if machine.get("gpu") else "no GPU")
    versions = [f"{lib} {machine[lib]}" for lib in ("torch", "torchvision") if machine.get(lib)]
    return ", ".join(parts + versions)


def render(results_dir: Path, out: Path) -> str:
    results = newest_results(results_dir)
    link_base = Path(os.path.relpath(results_dir, out.parent))
    lines = [
        "# Benchmarks: current figures",
        "",
        "Generated by `python benchmarks/render_results.py` from the newest results file of each",
        "benchmark in [`benchmarks/results/`](../benchmarks/results/); do not edit by hand. How to run",
        "each benchmark, and what it prints, is in [`benchmarks/README.md`](../benchmarks/README.md).",
        "Each results file also holds a `note` on how it was measured, and earlier measurements under",
        "`superseded`.",
        "",
    ]
    lines += [f"- [{name}](#{name})" for name in results] + [""]
    for name, (path, result) in results.items():
        lines += [f"## {name}", ""]
        lines += [
            f"Results file: [`{path.name}`]({(link_base / path.name).as_posix()}). "
            f"Machine: {_machine_line(result.get('machine') or {})}.",
            "",
        ]
        command = result.get("command")
        if command:
            lines += ["```bash", *(command if isinstance(command, list) else [command]), "```", ""]
        if result.get("summary"):
            lines += [str(result["summary"]), ""]
        body = {k: v for k, v in result.items() if k not in HEADER_KEYS + HIDDEN_KEYS}
        lines += _render(body, level=3)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results", help="results")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="Markdown to write")
    args = parser.parse_args(argv)
    if not any(args.results.glob("*.json")):
        parser.error(f"--results {args.results}: no results files")
    text = render(args.results, args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
