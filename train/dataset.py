"""What the training loop needs of a dataset. data/ implements it without importing train/;
any object with these members trains, a user's own included."""
from collections.abc import Iterator
from typing import Protocol

import numpy as np

Batch = dict[str, np.ndarray]  # "inputs", "targets", and for evaluation "mask"


class Dataset(Protocol):
    name: str
    task: str                      # "classification" (integer targets) or "regression"

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def num_outputs(self) -> int: ...  # a logit per class, or a value per regression target

    def num_examples(self, split: str) -> int: ...

    def steps_per_epoch(self, batch_size: int) -> int: ...

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, start: int = 0,
                      process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
        """Epoch `epoch`'s global batches from number `start` on, this process's rows of each;
        a pure function of (seed, epoch), so a resumed run reads exactly what it would have."""

    def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        """Every example of `split` once; the last batch padded, with "mask" False there."""

    def description(self) -> dict:
        """JSON that rebuilds the dataset in another process (`data.from_description`): its
        name, options, classes, and whatever identifies the exact data. Checkpoints store it."""

    def summary(self) -> str:
        """One line that a run prints at its start: what was read and how it was prepared."""
