"""Where benchmarks put their results: ``benchmarks/results/<date>-<name>.json``, with the machine."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision

from fnoise_maskrcnn.device import processor_name

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """The machine a result was measured on: CPU, cores, GPU if any, library versions, date."""
    return {
        "cpu": processor_name("cpu"),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(name: str, result: Mapping[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Writes ``result`` plus the machine to ``results_dir/<UTC date>-<name>.json``; returns the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}-{name}.json"
    payload = {
        "benchmark": name,
        **result,
        "machine": machine(),
    }  # the measured machine, whatever result says
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
