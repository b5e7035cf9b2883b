"""DataLoaders for detection: collate, seeded shuffling, distributed sampling, aspect-ratio grouping.

``GroupedBatchSampler`` and the aspect-ratio binning follow torchvision's ``references/detection``
(they are not part of the torchvision library), written here from scratch.

A :class:`~.annotations.DatasetError` raised while loading an item (an unreadable image, say) reaches the
training loop as :class:`DataLoaderError`, a ``DatasetError`` with the same one-line message, whether it
was raised in the main process or in a DataLoader worker.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from .annotations import DatasetError


class DataLoaderError(DatasetError):
    """A :class:`DatasetError` raised while loading a batch; ``str()`` is its one-line message.

    torch re-raises a worker's exception in the main process as ``type(exc)(text)``, where ``text`` is
    "Caught ... in DataLoader worker process N." followed by the worker's whole traceback. Built from
    such a text, this class keeps only the original message: the last line of the traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_original_message(message))


def _original_message(text: str) -> str:
    marker = f"{DataLoaderError.__name__}: "
    if "\n" not in text.strip():
        return text
    last = next((line for line in reversed(text.splitlines()) if marker in line), None)
    return last.split(marker, 1)[1] if last is not None else text


class _OneLineErrors(Dataset):
    """``dataset`` whose :class:`DatasetError` becomes a :class:`DataLoaderError`; other attributes are
    the dataset's own (``aspect_ratios``, ``coco``, ``categories`` ...)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DataLoaderError:
            raise
        except DatasetError as exc:
            raise DataLoaderError(str(exc)) from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "dataset":  # not set yet (while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_fn(batch: Sequence[tuple]) -> tuple:
    """``[(image, target), ...] -> ((image, ...), (target, ...))``: images differ in size, so no stacking."""
    return tuple(zip(*batch))


class SeededRandomSampler(Sampler[int]):
    """A random permutation that depends only on ``(seed, epoch)``.

    ``RandomSampler`` has no ``set_epoch``; this one mirrors ``DistributedSampler`` so that the data order
    of epoch ``e`` is the same whether training ran straight through or was resumed at ``e``.
    """

    def __init__(self, data_source: Sequence, seed: int = 0) -> None:
        self.num_samples = len(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def aspect_ratio_groups(aspect_ratios: Sequence[float], group_factor: int) -> list[int]:
    """Bin width/height ratios into ``2 * group_factor + 2`` groups with log-spaced edges in [1/2, 2]."""
    edges = torch.logspace(-1, 1, 2 * group_factor + 1, base=2).tolist() if group_factor > 0 else [1.0]
    return [bisect.bisect_right(edges, r) for r in aspect_ratios]


class GroupedBatchSampler(BatchSampler):
    """Batches whose images share an aspect-ratio group, so that padding to the batch's size wastes little.

    Indices come in the order of ``sampler``; a batch is yielded as soon as its group has
    ``batch_size`` of them. What is left over at the end is yielded in batches of mixed groups, so every
    index is used exactly once and there are ``ceil(len(sampler) / batch_size)`` batches.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            buffer = buffers[self.group_ids[index]]
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                buffer.clear()
        leftover = [i for group in sorted(buffers) for i in buffers[group]]
        for start in range(0, len(leftover), self.batch_size):
            yield leftover[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def build_dataloader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    distributed: bool = False,
    aspect_ratio_group_factor: int = 3,
    seed: int = 0,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader as torchvision's detection references build it.

    Args:
        train: shuffle (``SeededRandomSampler``, or ``DistributedSampler(shuffle=True, seed=seed)``) and
            group batches by aspect ratio; otherwise keep dataset order.
        distributed: shard with ``DistributedSampler`` (needs an initialised process group).
        aspect_ratio_group_factor: ``< 0`` disables grouping; needs ``dataset.aspect_ratios()``.
        seed: data order (and the workers' augmentation seeds) depend only on ``seed`` and the epoch.
        pin_memory: default ``torch.cuda.is_available()``.

    Call :func:`set_epoch` before each epoch to get a new order per epoch. Iterating raises
    :class:`DataLoaderError` (one line naming the file) when an item cannot be loaded, also in a worker.
    """
    sampler: Sampler[int]
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
    elif train:
        sampler = SeededRandomSampler(dataset, seed=seed)
    else:
        sampler = SequentialSampler(dataset)
    if train and aspect_ratio_group_factor >= 0 and hasattr(dataset, "aspect_ratios"):
        groups = aspect_ratio_groups(dataset.aspect_ratios(), aspect_ratio_group_factor)
        batch_sampler: Sampler = GroupedBatchSampler(sampler, groups, batch_size)
    else:
        batch_sampler = BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(
        dataset if isinstance(dataset, _OneLineErrors) else _OneLineErrors(dataset),
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),  # seeds the workers' torch/random/numpy RNGs
    )


def set_epoch(data_loader: DataLoader, epoch: int) -> None:
    """Make the next pass over ``data_loader`` use the order of ``epoch`` (no-op for sequential order)."""
    sampler = getattr(data_loader.batch_sampler, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
