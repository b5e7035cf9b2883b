"""A comparison from run directories to files: the runs grouped into arms, the figure, the summary.

What ``python -m fnoise_maskrcnn.compare`` writes: ``<out>.png`` (:func:`.plots.plot_comparison`),
``<out>.md`` and ``<out>.json`` (:func:`.report.summarize`, :func:`.report.summary_markdown`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..io.atomic import write_text_atomic
from ..visualization import save_figure
from .plots import plot_comparison
from .report import summarize, summary_markdown
from .runs import DEFAULT_IGNORED_KEYS, Arm, group_runs, load_run

__all__ = ["load_arms", "write_comparison"]


def load_arms(
    run_dirs: Iterable[str | os.PathLike], ignored_keys: Iterable[str] = DEFAULT_IGNORED_KEYS
) -> list[Arm]:
    """Reads each run directory once (two spellings of one directory count once) and groups the runs
    into arms. A run keeps the path it was given, so the summary names relative paths as they were typed.

    Raises:
        RunError: a run directory is missing or malformed, or two runs of an arm share a seed.
    """
    unique_dirs: dict[Path, Path] = {}
    for run_dir in run_dirs:
        unique_dirs.setdefault(Path(run_dir).resolve(), Path(run_dir))
    return group_runs([load_run(d) for d in unique_dirs.values()], ignored_keys)


def write_comparison(arms: Sequence[Arm], out: Path, *, smoothing: int | None = None, title: str = "") -> str:
    """Writes the figure to ``out`` (a PNG) and the summary beside it, to ``out.md`` and ``out.json``.

    Returns:
        The summary's Markdown (what ``out.md`` holds).
    """
    summary = summarize(arms)
    markdown = summary_markdown(summary)
    save_figure(plot_comparison(arms, smoothing=smoothing, title=title), out)
    write_text_atomic(markdown, out.with_suffix(".md"))
    write_text_atomic(json.dumps(summary, indent=2) + "\n", out.with_suffix(".json"))
    return markdown
