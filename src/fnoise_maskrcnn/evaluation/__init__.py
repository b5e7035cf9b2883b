"""COCO evaluation: the one COCOeval path (training, ``evaluate``, the benchmarks) and checkpoint scoring.

- :mod:`.coco`: COCO results from model outputs, COCOeval with either backend, AP at other
  per-image detection limits, the metrics table;
- :mod:`.checkpoint_eval`: :func:`evaluate_checkpoint`, a checkpoint's APs on a COCO-format set (the
  library side of ``python -m fnoise_maskrcnn.evaluate``);
- :mod:`.results_file`: a ground truth and saved COCO results files, checked, for scoring them again.

The public names are imported on first use.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_PUBLIC = {
    "BACKENDS": ".coco",
    "ap_at_max_dets": ".coco",
    "evaluate_coco": ".coco",
    "format_metrics_table": ".coco",
    "predictions_to_coco_results": ".coco",
    "run_cocoeval": ".coco",
    "evaluate_checkpoint": ".checkpoint_eval",
    "load_coco_results": ".results_file",
    "load_ground_truth": ".results_file",
}

__all__ = list(_PUBLIC)

if TYPE_CHECKING:
    from .checkpoint_eval import evaluate_checkpoint as evaluate_checkpoint
    from .coco import BACKENDS as BACKENDS
    from .coco import ap_at_max_dets as ap_at_max_dets
    from .coco import evaluate_coco as evaluate_coco
    from .coco import format_metrics_table as format_metrics_table
    from .coco import predictions_to_coco_results as predictions_to_coco_results
    from .coco import run_cocoeval as run_cocoeval
    from .results_file import load_coco_results as load_coco_results
    from .results_file import load_ground_truth as load_ground_truth

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
