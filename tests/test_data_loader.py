"""DataLoader helpers: grouped batching, seeded order, workers, collate."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from _training import TORCHRUN_TWO_PROCESSES
from conftest import write_images_only_coco
from fnoise_maskrcnn.data import (
    CocoInstances,
    DatasetError,
    GroupedBatchSampler,
    build_dataloader,
    build_transforms,
    set_epoch,
)
from fnoise_maskrcnn.data.loader import DataLoaderError, aspect_ratio_groups


def test_aspect_ratio_groups_split_portrait_square_landscape():
    groups = aspect_ratio_groups([0.4, 0.75, 1.0, 1.33, 2.5], group_factor=3)
    assert groups == sorted(groups) and len(set(groups)) == 5
    assert aspect_ratio_groups([0.4, 2.5], group_factor=0) == [0, 1]


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_grouped_batch_sampler_uses_every_index_once_and_groups_batches(batch_size):
    group_ids = [0, 1, 1, 0, 2, 0, 1, 0, 0, 2, 1]
    sampler = GroupedBatchSampler(SequentialSampler(range(len(group_ids))), group_ids, batch_size)
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(len(group_ids) / batch_size)
    assert sorted(i for b in batches for i in b) == list(range(len(group_ids)))
    full_group_batches = sum(n // batch_size for n in (5, 4, 2))
    for batch in batches[:full_group_batches]:
        assert len(batch) == batch_size and len({group_ids[i] for i in batch}) == 1
    if batch_size == 3:
        assert batches[0] == [0, 3, 5] and batches[1] == [1, 2, 6]


def order(loader):
    return [t["image_id"] for _, targets in loader for t in targets]


def test_train_loader_order_depends_on_seed_and_epoch_only(synthetic_coco):
    ds = CocoInstances(synthetic_coco.train_images, synthetic_coco.train_ann, build_transforms(True))
    a = build_dataloader(ds, batch_size=2, train=True, seed=0)
    b = build_dataloader(ds, batch_size=2, train=True, seed=0)
    c = build_dataloader(ds, batch_size=2, train=True, seed=1)
    first = order(a)
    assert sorted(first) == sorted(ds.image_ids)
    assert order(b) == first and order(c) != first
    assert order(a) == first  # same epoch again
    set_epoch(a, 1)
    set_epoch(b, 1)
    assert order(a) != first and order(a) == order(b)

    images, targets = next(iter(a))
    assert isinstance(images, tuple) and len(images) == 2 == len(targets)
    assert all(img.dtype == torch.float32 and img.shape[0] == 3 for img in images)


def test_eval_loader_keeps_dataset_order_and_works_with_workers(synthetic_coco):
    ds = CocoInstances(synthetic_coco.val_images, synthetic_coco.val_ann, build_transforms(False))
    loader = build_dataloader(ds, batch_size=3, train=False, workers=2, pin_memory=False)
    assert order(loader) == ds.image_ids
    images, targets = next(iter(loader))
    expected_image, expected_target = ds[0]
    assert torch.equal(images[0], expected_image)
    assert torch.equal(targets[0]["masks"], expected_target["masks"])


_SHARD_SCRIPT = """
import json, sys
import torch.distributed as dist
from fnoise_maskrcnn.data import CocoInstances, build_dataloader, build_transforms, set_epoch
from fnoise_maskrcnn.data.loader import GroupedBatchSampler
from torch.utils.data import DistributedSampler

images, ann, out = sys.argv[1:]
dist.init_process_group("gloo")
ds = CocoInstances(images, ann, build_transforms(True))
loader = build_dataloader(ds, batch_size=2, train=True, distributed=True, seed=0)
assert isinstance(loader.batch_sampler, GroupedBatchSampler)
assert isinstance(loader.batch_sampler.sampler, DistributedSampler)
orders = []
for epoch in (0, 1):
    set_epoch(loader, epoch)
    orders.append([ds.image_ids[i] for batch in loader.batch_sampler for i in batch])
with open(f"{out}{dist.get_rank()}.json", "w") as f:
    json.dump({"rank": dist.get_rank(), "orders": orders, "all": ds.image_ids}, f)
dist.destroy_process_group()
"""


def test_distributed_loader_shards_with_distributed_sampler(synthetic_coco, tmp_path):
    """Two gloo processes: disjoint shards that together cover every image, reshuffled per epoch."""
    script = tmp_path / "shard.py"
    script.write_text(_SHARD_SCRIPT)
    command = [
        *TORCHRUN_TWO_PROCESSES,
        str(script),
        str(synthetic_coco.train_images),
        str(synthetic_coco.train_ann),
        str(tmp_path / "rank"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    everything = ranks[0]["all"]
    for epoch in (0, 1):
        shards = [set(rank["orders"][epoch]) for rank in ranks]
        assert not shards[0] & shards[1]  # each image on one process only (8 images, even split)
        assert shards[0] | shards[1] == set(everything)
        assert len(ranks[0]["orders"][epoch]) == len(ranks[1]["orders"][epoch]) == len(everything) // 2
    assert ranks[0]["orders"][0] != ranks[0]["orders"][1]  # set_epoch reshuffles


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_one_line_error_also_from_a_worker(tmp_path, workers):
    images = tmp_path / "images"
    images.mkdir()
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    for name in names:
        Image.new("RGB", (16, 12), (200, 100, 50)).save(images / name)
    (images / "c.jpg").write_bytes((images / "c.jpg").read_bytes()[:30])  # a JPEG cut after its header
    ann_file = write_images_only_coco(tmp_path / "ann.json", names)
    ds = CocoInstances(images, ann_file)
    loader = build_dataloader(ds, batch_size=1, train=False, workers=workers, pin_memory=False)
    assert loader.dataset.coco is ds.coco and len(loader.dataset) == 4  # the dataset's attributes stay
    with pytest.raises(DataLoaderError) as caught:
        order(loader)
    message = str(caught.value)
    assert isinstance(caught.value, DatasetError)  # what train's main already reports as one line
    assert message.startswith(f"{images / 'c.jpg'}: cannot read image (") and "\n" not in message
    assert "Traceback" not in message and "worker" not in message
