"""Batches from datasets held in host memory as numpy arrays.

Datasets that fit in memory are decoded once and batched from arrays (DESIGN.md section 6).
The batch order is a pure function of (seed, epoch), so a run can be resumed at any step and
any number of processes see the same global batches.
"""
import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from data.batching import (full_batches, local_batch_size, padded_eval_indices,  # noqa: F401
                           train_rows)

Batch = dict[str, np.ndarray]


Augment = Callable[[Batch, np.random.Generator, slice, int], Batch]


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """Named splits of equal-length arrays, e.g. {"train": {"inputs": ..., "targets": ...}}.

    `task` is "classification" (integer `targets`, `num_classes` of them, named by
    `class_names` where they have names) or "regression" (float32 `targets` of shape
    (N, outputs); `num_classes` is 0). The splits hold inputs as they were read (uint8 pixels,
    raw table values); `normalize` turns them into model input (e.g. uint8 -> scaled float32,
    standardised columns), for every batch and for `model_inputs`. `augment(batch, rng, rows,
    global_batch_size)` randomises training batches: `rng` is seeded by (seed, epoch, step) for
    the whole global batch and `rows` are this process's rows of it, so an example gets the
    same augmentation whatever the process count. `about` is what a checkpoint records of the
    dataset (see `description`).
    """

    name: str
    splits: dict[str, Batch]
    num_classes: int
    normalize: Callable[[Batch], Batch] | None = None
    augment: Augment | None = None
    task: str = "classification"
    class_names: tuple[str, ...] = ()
    about: dict = dataclasses.field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return next(iter(self.splits.values()))["inputs"].shape[1:]

    @property
    def num_outputs(self) -> int:
        """What the model's last layer emits: a logit per class, or a value per target."""
        if self.task == "regression":
            return next(iter(self.splits.values()))["targets"].shape[-1]
        return self.num_classes

    def description(self) -> dict:
        """JSON: the name and options that rebuild this dataset (`data.from_description`), the
        class names, the preprocessing and whatever identifies the exact data it holds."""
        return {"name": self.name, "task": self.task, "input_shape": list(self.input_shape),
                "classes": list(self.class_names), **self.about,
                "examples": {s: self.num_examples(s) for s in self.splits}}

    def summary(self) -> str:
        """One line for the start of a run: what was read, the splits and the preprocessing."""
        return summary_line(self, {s: self.num_examples(s) for s in self.splits})

    def model_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Inputs as the splits hold them (raw pixels, raw columns) -> what the model reads."""
        return self._normalized({"inputs": np.asarray(inputs)})["inputs"]

    def subset(self, split: str, n: int, seed: int) -> "ArrayDataset":
        """The same dataset with only `n` examples of `split`, drawn by `seed` (stratified by
        class for classification, so every class keeps its share), in their original order."""
        total = self.num_examples(split)
        if not 0 < n <= total:
            raise ValueError(f"dataset.train_examples={n} must be between 1 and the {total} "
                             f"{split!r} examples of {self.name} (0 keeps them all)")
        arrays = self._split(split)
        rng = np.random.default_rng(seed)
        if self.task == "classification":  # round-robin over classes in a random order
            by_class = [rng.permutation(np.flatnonzero(arrays["targets"] == c))
                        for c in np.unique(arrays["targets"])]
            interleaved = [idx[i] for i in range(max(map(len, by_class))) for idx in by_class
                           if i < len(idx)]
            picked = np.array(interleaved[:n])
        else:
            picked = rng.permutation(total)[:n]
        picked = np.sort(picked)
        return dataclasses.replace(
            self, splits={**self.splits, split: {k: v[picked] for k, v in arrays.items()}},
            about={**self.about, "train_examples": n, "train_examples_seed": seed})

    def num_examples(self, split: str) -> int:
        return len(self._split(split)["targets"])

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        """Full global batches per epoch; the remainder is dropped in training."""
        return full_batches(self.num_examples(split), batch_size, f"{split!r} examples of "
                                                                  f"{self.name}")

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, split: str = "train",
                      process_index: int = 0, process_count: int = 1, start: int = 0
                      ) -> Iterator[Batch]:
        """One epoch of shuffled global batches of `batch_size`, this process's slice of each,
        from batch `start` on."""
        arrays = self._split(split)
        local = local_batch_size(batch_size, process_count)
        rows = slice(process_index * local, (process_index + 1) * local)
        order = np.random.default_rng([seed, epoch]).permutation(self.num_examples(split))
        for step, idx in train_rows(order, batch_size, self.steps_per_epoch(batch_size, split),
                                    start=start, process_index=process_index,
                                    process_count=process_count):
            batch = {k: v[idx] for k, v in arrays.items()}
            if self.augment is not None:
                batch = self.augment(batch, np.random.default_rng([seed, epoch, step]), rows,
                                     batch_size)
            yield self._normalized(batch)

    def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        """Every example of `split` once, in order; the last batch is padded and has mask 0 there."""
        arrays = self._split(split)
        for idx, mask in padded_eval_indices(self.num_examples(split), batch_size, process_index,
                                             process_count):
            yield {**self._normalized({k: v[idx] for k, v in arrays.items()}), "mask": mask}

    def _normalized(self, batch: Batch) -> Batch:
        return batch if self.normalize is None else self.normalize(batch)

    def _split(self, split: str) -> Batch:
        if split not in self.splits:
            raise ValueError(
                f"{self.name} has no split {split!r}; its splits: {', '.join(self.splits)}"
            )
        return self.splits[split]


def summary_line(dataset, counts: dict[str, int]) -> str:
    """'data: SOURCE: 10 classes (a, b, ...), inputs 28x28x1; 54,000 train, ...; PREPROCESSING'
    for a dataset with `task`, `num_outputs`, `class_names`, `input_shape` and `about`."""
    if dataset.task == "regression":
        what = f"regression of {dataset.num_outputs} value(s)"
    else:
        names = ", ".join(dataset.class_names[:5]) + (
            ", ..." if len(dataset.class_names) > 5 else "")
        what = f"{dataset.num_outputs} classes" + (f" ({names})" if dataset.class_names else "")
    shape = "x".join(map(str, dataset.input_shape))
    listed = ", ".join(f"{n:,} {s}" for s, n in counts.items())
    prepared = dataset.about.get("preprocessing")
    return (f"data: {dataset.about.get('source', dataset.name)}: {what}, inputs {shape}; "
            f"{listed}" + (f"; {prepared}" if prepared else ""))
