"""The training loader of the classification datamodule: a seeded sampler whose per-sample
augmentation randomness depends only on (seed, epoch, index), and a DataLoader whose position
Lightning saves in checkpoints, so that a run resumes mid-epoch on the next batch.

Lightning-free (torch only): `classification.data` and `classification.sources` build on it.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["SeededSampler", "ResumableDataLoader"]


class SeededSampler(DistributedSampler):
    """`DistributedSampler` (also for one process) that yields (index, seed, epoch) for
    `imagefolder.ImageFolderDataset` and can start mid-epoch (`start_batch`, used when resuming)."""

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.batch_size = batch_size
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        indices = list(super().__iter__())
        for i in indices[self.start_batch * self.batch_size:]:
            yield i, self.seed, self.epoch


class ResumableDataLoader(DataLoader):
    """Training DataLoader over a `SeededSampler` that Lightning saves in checkpoints
    (`state_dict`/`load_state_dict`), so `fit --ckpt_path` resumes mid-epoch on the next batch.

    A position at the end of an epoch (every batch consumed) is stored as the start of the next
    epoch: the trainer builds the first iterator of a resumed run before it names the epoch, and
    workers fetch from it at once, so the sampler must already stand where training goes on.

    Args:
        position: returns how many batches of the current epoch the training loop has consumed
            (prefetched batches do not count); the DataModule passes the trainer's progress.
        epoch_batches: returns how many batches an epoch trains (the trainer's count, which
            `limit_train_batches` may cut); by default the loader's length.
    """

    def __init__(self, *args: Any, position: Callable[[], int] | None = None,
                 epoch_batches: Callable[[], float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self.epoch_batches = epoch_batches

    def state_dict(self) -> dict[str, int]:
        done = self.position() if self.position is not None else 0
        epoch = int(self.sampler.epoch)
        length = self.epoch_batches() if self.epoch_batches is not None else len(self)
        if done >= min(length, len(self)):  # the epoch is over: go on with the next one
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches_done"])
        if done >= len(self):  # an epoch's end stored as its last position: the next epoch
            epoch, done = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.start_batch = done
