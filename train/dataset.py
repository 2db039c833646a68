"""What training asks of a dataset, as Protocols. data/ implements them without importing
train/; any object with these members trains, a user's own included.

`Dataset` is what every run needs. The others are capabilities a dataset may have, each
checked once with `isinstance` where it is used: `InMemory` (its training split can live on
the devices, each step reading its batch there; it can be cut to fewer examples), `Text`
(tokens to and from text, for sampling), `Preprocesses` (raw inputs to model inputs, for
predicting on a user's own inputs) and `ReadsImageFiles` (image files to model-sized pixels).
"""
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

Batch = dict[str, np.ndarray]  # "inputs", "targets", and for evaluation "mask"


@runtime_checkable
class Dataset(Protocol):
    name: str
    task: str                      # "classification" (integer targets) or "regression"
    class_names: tuple[str, ...]   # one per class, or empty: unnamed classes, regression

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


@runtime_checkable
class InMemory(Protocol):
    """A dataset held in host memory as arrays."""

    def device_arrays(self, split: str = "train") -> Batch:
        """The split's arrays as stored (uint8 pixels stay uint8), to be placed on devices."""

    def train_plans(self, batch_size: int, *, seed: int, epoch: int,
                    start: int = 0) -> Iterator[dict]:
        """Epoch `epoch`'s global batches from number `start` on, as plans: each batch's row
        numbers and augmentation draws, the same batches `train_batches` gives."""

    def device_batch(self, arrays: Batch, plan: dict) -> Batch:
        """Traceable: the batch `plan` names, read from `arrays` (gathered, augmented,
        normalised) inside the compiled step."""

    def subset(self, split: str, n: int, seed: int) -> "InMemory":
        """The same dataset with `n` examples of `split` kept (stratified by class)."""


@runtime_checkable
class Text(Protocol):
    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids) -> str: ...


@runtime_checkable
class Preprocesses(Protocol):
    def model_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Inputs as the dataset stores them (raw pixels, raw table columns) -> what the model
        takes: the preprocessing training applied."""


@runtime_checkable
class ReadsImageFiles(Protocol):
    def read_image_files(self, paths: list[str]) -> np.ndarray:
        """Image files -> the dataset's stored pixels (resized and cropped as it reads its own)."""


def check_dataset(dataset) -> None:
    """Fails with the members `dataset` lacks when it does not meet `Dataset`."""
    if not isinstance(dataset, Dataset):
        members = {*Dataset.__annotations__, *(k for k, v in vars(Dataset).items()
                                               if not k.startswith("_")
                                               and (callable(v) or isinstance(v, property)))}
        missing = [m for m in members if not hasattr(dataset, m)]
        raise TypeError(f"{type(dataset).__name__} is not a dataset training can read: it has "
                        f"no {', '.join(sorted(missing))} (see train.dataset.Dataset)")
