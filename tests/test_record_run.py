"""benchmarks/record_run.py: the settings it records come from a real run's nested config.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _scripts import REPO, load_script
from fnoise_maskrcnn.arguments import parse

SCRIPT = REPO / "benchmarks" / "record_run.py"


def _record_run():
    return load_script("benchmarks/record_run.py")


def test_settings_are_the_resolved_sections_without_the_machines_choices(tmp_path):
    argv = [
        "--data-path",
        str(tmp_path),
        "--recipe",
        "cpu-scratch",
        "--epochs",
        "7",
        "--seed",
        "3",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    config = parse(argv).config.to_dict()  # what train writes to config.json
    kept = _record_run().settings(json.loads(json.dumps(config)))
    assert set(kept) == {"data", "model", "optim", "run"}
    # what the recipe and the flags resolved to, not nulls
    assert kept["optim"]["epochs"] == 7 and kept["optim"]["lr"] == 0.02 and kept["run"]["seed"] == 3
    assert (
        kept["model"]["norm"] == "gn" and kept["model"]["min_size"] == 384 and kept["data"]["batch_size"] == 4
    )
    assert "output_dir" not in kept["run"] and "threads" not in kept["run"]
    assert "data_path" not in kept["data"] and "train_loss_images" in kept["data"]
    assert "output_dir" in config["run"]  # the caller's dict is left alone


def test_a_flat_config_is_a_one_line_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"epochs": 3, "lr": 0.02}))
    (run / "metrics.jsonl").write_text("")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(run), "--name", "x", "--command", "c"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert str(run / "config.json") in last and "no data, model, optim, run section" in last


@pytest.mark.parametrize("section", ["data", "model", "optim", "run"])
def test_each_missing_section_is_named(section):
    config = {name: {} for name in ("data", "model", "optim", "run") if name != section}
    with pytest.raises(ValueError, match=f"no {section} section"):
        _record_run().settings(config)
