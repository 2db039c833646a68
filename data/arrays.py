"""Batches from datasets held in host memory as numpy arrays.

Datasets that fit in memory are decoded once and batched from arrays (docs/design.md, 6).
The batch order is a pure function of (seed, epoch), so a run can be resumed at any step and
any number of processes see the same global batches.
"""
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from data.batching import (full_batches, local_batch_size, padded_eval_indices,  # noqa: F401
                           train_rows)

Batch = dict[str, np.ndarray]


class Augmentation(NamedTuple):
    """Random augmentation of training batches in two parts: `draw(rng, global_batch_size)`
    picks the random choices for a whole global batch on the host (a few numbers per example),
    and `apply(batch, draws, xp)` applies them with numpy or jax.numpy (`xp`): on the host, or
    inside the compiled step for data kept on the device, with the same result."""
    draw: Callable[[np.random.Generator, int], dict]
    apply: Callable[..., Batch]


def scale(batch: Batch, mean=None, std=None) -> Batch:
    """uint8 pixels -> float32 in [0, 1], then per-channel (x - mean) / std if given.

    Looked up in a table of the 256 pixel values per channel rather than computed: the host
    and a compiled step on the device (whose arithmetic fuses and rounds differently) then
    produce the very same numbers."""
    x = batch["inputs"]
    table_256xC = _scale_table(x.shape[-1], None if mean is None else tuple(mean),
                               None if std is None else tuple(std))
    if not isinstance(x, np.ndarray):  # a jax array: inside a compiled step
        import jax.numpy as jnp
        table_256xC = jnp.asarray(table_256xC)
    return {**batch, "inputs": table_256xC[x.astype(np.int32), np.arange(x.shape[-1])]}


@functools.lru_cache(maxsize=16)
def _scale_table(channels: int, mean, std) -> np.ndarray:
    values = np.repeat(np.arange(256, dtype=np.float32)[:, None], channels, axis=1) / 255.0
    if mean is not None:
        values = (values - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return values.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """How a dataset's stored inputs become model inputs, as numbers a checkpoint records (so
    `predict` needs no training data): uint8 `pixels` are scaled to [0, 1] first; then, where
    `mean` is given, (x - mean) / std per feature (the last axis: a table's column, an image's
    channel). Without either, the stored inputs are the model inputs. Written with array
    operators only, so it also runs on jax arrays inside a compiled step."""
    pixels: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, train_inputs: np.ndarray) -> "Normalization":
        """Standardisation by the statistics of `train_inputs` (floats), per feature; a
        feature that never varies is left at 0 rather than divided by 0."""
        axes = tuple(range(max(train_inputs.ndim - 1, 1)))
        mean = train_inputs.mean(axes, dtype=np.float64).astype(np.float32)
        std = train_inputs.std(axes, dtype=np.float64).astype(np.float32)
        std = np.where(std > 0, std, np.float32(1.0))
        return cls(mean=tuple(map(float, np.atleast_1d(mean))),
                   std=tuple(map(float, np.atleast_1d(std))))

    @classmethod
    def from_record(cls, record: dict) -> "Normalization":
        return cls(bool(record.get("pixels")),
                   *(None if record.get(k) is None else tuple(record[k]) for k in ("mean", "std")))

    def record(self) -> dict:
        return {"pixels": self.pixels, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    def __call__(self, batch: Batch) -> Batch:
        if self.pixels:
            return scale(batch, self.mean, self.std)
        if self.mean is None:
            return batch
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return {**batch, "inputs": (batch["inputs"] - mean) / std}


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """Named splits of equal-length arrays, e.g. {"train": {"inputs": ..., "targets": ...}}.

    `task` is "classification" (integer `targets`, `num_classes` of them, named by
    `class_names` where they have names) or "regression" (float32 `targets` of shape
    (N, outputs); `num_classes` is 0). The splits hold inputs as they were read (uint8 pixels,
    raw table values); `normalize` turns them into model input (e.g. uint8 -> scaled float32,
    standardised columns), for every batch and for `model_inputs`; it is written with array
    methods and operators only, so it also runs on jax arrays inside a compiled step.
    `augment` randomises training batches: its draws are seeded by (seed, epoch, step) for the
    whole global batch, and a process applies its rows of them, so an example gets the same
    augmentation whatever the process count, on the host or on the device. `about` is what a
    checkpoint records of the dataset (see `description`).
    """

    name: str
    splits: dict[str, Batch]
    num_classes: int
    normalize: Callable[[Batch], Batch] | None = None
    augment: Augmentation | None = None
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
        recipe = self.normalize if self.normalize is not None else Normalization()
        return {"name": self.name, "task": self.task, "input_shape": list(self.input_shape),
                "classes": list(self.class_names), "outputs": self.num_outputs,
                "stored": str(self.device_arrays("train")["inputs"].dtype), **self.about,
                **({"normalization": recipe.record()} if isinstance(recipe, Normalization)
                   else {}),
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
        rows = _process_rows(batch_size, process_index, process_count)
        for step, idx in self._epoch(batch_size, seed, epoch, split, start, process_index,
                                     process_count):
            batch = {k: v[idx] for k, v in arrays.items()}
            if self.augment is not None:
                draws = self.augment.draw(np.random.default_rng([seed, epoch, step]), batch_size)
                batch = self.augment.apply(batch, {k: v[rows] for k, v in draws.items()}, np)
            yield self._normalized(batch)

    # --- data kept on the device: the host sends a few numbers per example, the device reads

    def device_arrays(self, split: str = "train") -> Batch:
        """The arrays of `split` as the splits hold them, to be placed on the devices once."""
        return self._split(split)

    def train_plans(self, batch_size: int, *, seed: int, epoch: int, split: str = "train",
                    start: int = 0) -> Iterator[dict]:
        """For every global batch that `train_batches` yields, the same batch as a plan:
        `index` (its rows of `device_arrays`) and the augmentation's draws for the whole global
        batch. `device_batch(arrays, plan)` turns it into exactly that batch."""
        for step, idx in self._epoch(batch_size, seed, epoch, split, start, 0, 1):
            plan = {"index": idx.astype(np.int32)}
            if self.augment is not None:
                plan.update(self.augment.draw(np.random.default_rng([seed, epoch, step]),
                                              batch_size))
            yield plan

    def device_batch(self, arrays: Batch, plan: dict) -> Batch:
        """The global batch `plan` names, from `arrays` on the device (traced: call it inside
        `jax.jit`), augmented and normalised as `train_batches` does on the host."""
        import jax.numpy as jnp

        batch = {k: v[plan["index"]] for k, v in arrays.items()}
        if self.augment is not None:
            batch = self.augment.apply(batch, {k: v for k, v in plan.items() if k != "index"},
                                       jnp)
        return self._normalized(batch)

    def _epoch(self, batch_size, seed, epoch, split, start, process_index, process_count):
        order = np.random.default_rng([seed, epoch]).permutation(self.num_examples(split))
        return train_rows(order, batch_size, self.steps_per_epoch(batch_size, split),
                          start=start, process_index=process_index, process_count=process_count)

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


def _process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    local = local_batch_size(batch_size, process_count)
    return slice(process_index * local, (process_index + 1) * local)


def printable(text: str) -> str:
    """`text` from the user's data (a class or column name), safe to print: control characters
    and other unprintable ones escaped as Python writes them (a terminal's escape sequence
    `\x1b[2J` stays text), anything else as it is."""
    return text if text.isprintable() else repr(text)[1:-1]


def summary_line(dataset, counts: dict[str, int]) -> str:
    """'data: SOURCE: 10 classes (a, b, ...), inputs 28x28x1; 54,000 train, ...; PREPROCESSING'
    for a dataset with `task`, `num_outputs`, `class_names`, `input_shape` and `about`."""
    if dataset.task == "regression":
        what = f"regression of {dataset.num_outputs} value(s)"
    else:
        names = ", ".join(map(printable, dataset.class_names[:5])) + (
            ", ..." if len(dataset.class_names) > 5 else "")
        what = f"{dataset.num_outputs} classes" + (f" ({names})" if dataset.class_names else "")
    shape = "x".join(map(str, dataset.input_shape))
    listed = ", ".join(f"{n:,} {s}" for s, n in counts.items())
    prepared = dataset.about.get("preprocessing")
    return (f"data: {dataset.about.get('source', dataset.name)}: {what}, inputs {shape}; "
            f"{listed}" + (f"; {prepared}" if prepared else ""))
