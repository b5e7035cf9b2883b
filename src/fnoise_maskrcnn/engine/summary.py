"""What a training run reports on the console: a short configuration, and the end-of-run summary."""

import datetime
from pathlib import Path
from typing import Any

from ..device import processor_name
from ..study.runs import epoch_records
from .run import Run
from .state import LOSS_NAMES, format_losses

__all__ = ["print_summary", "config_lines", "run_facts"]


def config_lines(run: Run) -> list[str]:
    """A few lines that say what this run is (the whole configuration is in config.json)."""
    config = run.config
    data = "synthetic dataset" if run.data.synthetic else str(run.data.train_ann)
    return [
        f"run: {run.output_dir}  (full configuration: {run.output_dir / 'config.json'})",
        f"data: {data}, {len(run.train_set)} training / {len(run.val_set) if run.val_set else 0} validation "
        f"images, {len(run.categories)} categories",
        f"model: {config.model.model}, norm {run.model_config.get('norm')}, "
        f"{config.model.min_size}-{config.model.max_size} px; F-Noise: {config.model.f_noise.describe()}",
        f"training: {config.optim.epochs} epochs x {run.iters_per_epoch} iterations, batch "
        f"{config.data.batch_size} x {run.ctx.world_size} process(es), {config.optim.opt} "
        f"lr {config.optim.lr:g} ({config.optim.lr_scheduler}), {_precision(run)}, "
        f"device {run.device}, seed {config.run.seed}",
    ]


def _precision(run: Run) -> str:
    """``"amp bfloat16"`` and the like, or why ``--amp`` trains in float32 here."""
    if run.amp:
        return f"amp {run.precision}"
    if run.config.optim.amp:
        return "float32 (--amp is off on this CPU: it has no bfloat16 instructions, emulating them is slower)"
    return "float32"


def run_facts(run: Run) -> dict[str, Any]:
    """What the configuration resolved to on this machine (written once per session to metrics.jsonl)."""
    import torch

    return {
        "train_ann": str(run.data.train_ann),
        "train_images": str(run.data.train_images),
        "val_ann": str(run.data.val_ann) if run.data.val_ann else None,
        "synthetic_data": run.data.synthetic,
        "device": str(run.device),
        "processor": processor_name(run.device),
        "precision": run.precision,
        "world_size": run.ctx.world_size,
        "iters_per_epoch": run.iters_per_epoch,
        "num_train_images": len(run.train_set),
        "num_val_images": len(run.val_set) if run.val_set is not None else 0,
        "categories": run.categories,
        "model_config": run.model_config,
        "torch": torch.__version__,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ap_history(run_dir: Path) -> list[str]:
    """``"epoch: bbox AP / segm AP"`` for each evaluated epoch recorded in ``metrics.jsonl`` (this
    session's and earlier ones')."""
    return [
        f"{record['epoch']}: {record['bbox']['AP']:.3f} / {record['segm']['AP']:.3f}"
        for record in epoch_records(run_dir)
        if record.get("segm")
    ]


def print_summary(run: Run, last_epoch: dict[str, Any] | None, seconds: float) -> None:
    """The end-of-run console summary: losses, AP, the files written, and what to run next."""
    out = run.output_dir
    print(
        f"\nDone: {run.state.epoch} epoch(s), {run.state.iteration} iterations, "
        f"{_fmt_time(seconds)} this session."
    )
    if last_epoch is not None:
        train = last_epoch["train"]
        print(
            f"  train loss (last epoch mean): {_fmt(train.get('loss'))}  "
            + "  ".join(f"{k}: {_fmt(train.get(k))}" for k in LOSS_NAMES)
        )
        if last_epoch.get("val"):
            print(f"  val loss: {_fmt(last_epoch['val']['loss'])}")
        if last_epoch.get("segm"):
            print(
                f"  bbox AP: {_fmt(last_epoch['bbox']['AP'])}  segm AP: {_fmt(last_epoch['segm']['AP'])}  "
                f"(best segm AP {_fmt(run.best_metric)} after epoch {run.best_epoch})"
            )
        f_noise = run.config.model.f_noise
        if f_noise.enabled:
            print(f"  F-Noise: {f_noise.describe()}")
        if last_epoch.get("f_noise_nsr"):
            nsr = format_losses(last_epoch["f_noise_nsr"])
            print(f"  F-Noise noise-to-signal ratio per level (last epoch): {nsr}")
    print(f"Files in {out}:")
    print(f"  {out / 'config.json'}    the resolved configuration")
    print(f"  {out / 'metrics.jsonl'}  one JSON object per logged iteration and per epoch")
    print(f"  {out / 'last.pth'}       training checkpoint (resume with --resume)")
    if (out / "best.pth").is_file():
        print(f"  {out / 'best.pth'}       the model with the best segm AP (no optimizer state)")
    print(f"  TensorBoard: tensorboard --logdir {out}")
    history = _ap_history(out)
    if history:
        print("Validation bbox AP / segm AP by epoch:  " + "   ".join(history))
    if run.val_set is not None and (out / "best.pth").is_file():
        image = Path(run.val_set.coco.imgs[run.val_set.image_ids[0]]["file_name"])
        image = (run.data.val_images or Path(".")) / image
        print(
            f"See the predictions on a validation image (a short run scores low: lower --score-thresh):\n"
            f"  python -m fnoise_maskrcnn.predict --checkpoint {out / 'best.pth'} --score-thresh 0.3 "
            f"--out-dir {out / 'predictions'} {image}"
        )


def _fmt_time(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))
