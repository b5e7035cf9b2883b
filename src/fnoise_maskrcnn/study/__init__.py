"""Studies of F-Noise: training runs as data, statistics over seeds, the comparison's report and figure.

- :mod:`.runs`: reading run directories (``config.json``, ``metrics.jsonl``) and grouping runs into arms;
- :mod:`.series`: a run's curves, its whole-course outcomes and its compute;
- :mod:`.stats`: mean ± std over seeds, differences with Student's t intervals and p-values, Holm;
- :mod:`.report`: the summary (JSON-able dict) and its Markdown;
- :mod:`.plots`: the comparison figure (matplotlib);
- :mod:`.comparison`: run directories to arms, and the figure and summary files of a comparison;
- :mod:`.arms`: the arms of a study (sweeps) and training them, one ``train`` process per run.

The library side of ``python -m fnoise_maskrcnn.compare``. The public names are imported on first use.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_PUBLIC = {
    "LOSS_KEYS": ".runs",
    "F_NOISE_KEYS": ".runs",
    "DEFAULT_IGNORED_KEYS": ".runs",
    "RunError": ".runs",
    "Run": ".runs",
    "Arm": ".runs",
    "load_run": ".runs",
    "epoch_records": ".runs",
    "planned_epochs": ".runs",
    "run_complete": ".runs",
    "group_runs": ".runs",
    "sigma_of": ".runs",
    "iteration_series": ".series",
    "epoch_series": ".series",
    "smooth": ".series",
    "gap_series": ".series",
    "gap_training_key": ".series",
    "OUTCOME_KEYS": ".series",
    "run_outcomes": ".series",
    "compute_seconds": ".series",
    "final_epoch": ".series",
    "final_values": ".series",
    "Stat": ".stats",
    "Difference": ".stats",
    "describe": ".stats",
    "difference": ".stats",
    "common_seed_difference": ".stats",
    "t_two_sided_p": ".stats",
    "holm": ".stats",
    "SUMMARY_METRICS": ".report",
    "OUTCOME_METRICS": ".report",
    "summarize": ".report",
    "summary_markdown": ".report",
    "plot_comparison": ".plots",
    "load_arms": ".comparison",
    "write_comparison": ".comparison",
    "STUDY_TRAIN_FLAGS": ".arms",
    "parse_sweep": ".arms",
    "SeedPlan": ".arms",
    "plan_seeds": ".arms",
    "study_arms": ".arms",
    "train_arms": ".arms",
}

__all__ = list(_PUBLIC)

if TYPE_CHECKING:
    from .arms import STUDY_TRAIN_FLAGS as STUDY_TRAIN_FLAGS
    from .arms import SeedPlan as SeedPlan
    from .arms import parse_sweep as parse_sweep
    from .arms import plan_seeds as plan_seeds
    from .arms import study_arms as study_arms
    from .arms import train_arms as train_arms
    from .comparison import load_arms as load_arms
    from .comparison import write_comparison as write_comparison
    from .plots import plot_comparison as plot_comparison
    from .report import OUTCOME_METRICS as OUTCOME_METRICS
    from .report import SUMMARY_METRICS as SUMMARY_METRICS
    from .report import summarize as summarize
    from .report import summary_markdown as summary_markdown
    from .runs import DEFAULT_IGNORED_KEYS as DEFAULT_IGNORED_KEYS
    from .runs import F_NOISE_KEYS as F_NOISE_KEYS
    from .runs import LOSS_KEYS as LOSS_KEYS
    from .runs import Arm as Arm
    from .runs import Run as Run
    from .runs import RunError as RunError
    from .runs import epoch_records as epoch_records
    from .runs import group_runs as group_runs
    from .runs import load_run as load_run
    from .runs import planned_epochs as planned_epochs
    from .runs import run_complete as run_complete
    from .runs import sigma_of as sigma_of
    from .series import OUTCOME_KEYS as OUTCOME_KEYS
    from .series import compute_seconds as compute_seconds
    from .series import epoch_series as epoch_series
    from .series import final_epoch as final_epoch
    from .series import final_values as final_values
    from .series import gap_series as gap_series
    from .series import gap_training_key as gap_training_key
    from .series import iteration_series as iteration_series
    from .series import run_outcomes as run_outcomes
    from .series import smooth as smooth
    from .stats import Difference as Difference
    from .stats import Stat as Stat
    from .stats import common_seed_difference as common_seed_difference
    from .stats import describe as describe
    from .stats import difference as difference
    from .stats import holm as holm
    from .stats import t_two_sided_p as t_two_sided_p

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
