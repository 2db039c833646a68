"""Character-level language modelling text: Tiny Shakespeare from tensorflow-datasets.

The vocabulary is the sorted characters of the training text; batches are fixed-length windows
of character ids with the next character as target at every position.
"""
import dataclasses
from collections.abc import Iterator

import numpy as np

from data.arrays import Batch, Normalization
from data.batching import full_batches, padded_eval_indices, train_rows
from data.tfds_source import data_source

# tfds splits Tiny Shakespeare 90/5/5 by position; the 10 % after the training text is one
# validation split here, the split the character-level literature reports.
SPLITS = {"train": ("train",), "validation": ("validation", "test")}


@dataclasses.dataclass(frozen=True)
class CharText:
    name: str
    vocab: str
    splits: dict[str, np.ndarray]  # split -> int32 character ids
    context: int = 256
    about: dict = dataclasses.field(default_factory=dict)

    task = "classification"  # of the next character, at every position
    unit = "characters"  # what a window holds and evaluation counts

    @property
    def num_classes(self) -> int:
        return len(self.vocab)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes are the next character: each is named by itself."""
        return tuple(self.vocab)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.context,)

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"characters not in the {len(self.vocab)}-character vocabulary of "
                             f"{self.name}: {''.join(unknown)!r}; use only characters of its "
                             f"training text")
        return np.array([index[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))

    def num_examples(self, split: str) -> int:
        return (len(self._split(split)) - 1) // self.context

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return full_batches(self._windows_of(split), batch_size, f"windows of {self.context} "
                            f"{self.unit} in the {split!r} text of {self.name}")

    def _windows_of(self, split: str) -> int:
        """Training windows: each starts at a random offset, so one fewer fits than examples."""
        return (len(self._split(split)) - 1 - self.context) // self.context

    def description(self) -> dict:
        """JSON: what rebuilds this dataset (see `ArrayDataset.description`)."""
        return {"name": self.name, "task": self.task, "input_shape": [self.context],
                "classes": list(self.vocab), "outputs": self.num_outputs, "stored": "int32",
                "normalization": Normalization().record(), "text": "characters",
                "train_windows": self._windows_of("train"), **self.about,
                "examples": {s: self.num_examples(s) for s in self.splits}}

    def summary(self) -> str:
        counts = ", ".join(f"{len(ids):,} {s}" for s, ids in self.splits.items())
        return (f"data: {self.name}: characters ({counts}), a vocabulary of "
                f"{len(self.vocab)} from the training text, windows of {self.context}")

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, split: str = "train",
                      process_index: int = 0, process_count: int = 1, start: int = 0
                      ) -> Iterator[Batch]:
        """Windows on a grid shifted by a random offset each epoch, in a shuffled order."""
        ids = self._split(split)
        rng = np.random.default_rng([seed, epoch])
        offset = int(rng.integers(self.context))
        order = rng.permutation((len(ids) - 1 - offset) // self.context)
        for _, idx in train_rows(order, batch_size, self.steps_per_epoch(batch_size, split),
                                 start=start, process_index=process_index,
                                 process_count=process_count):
            yield self._windows(ids, offset + idx * self.context)

    def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        """Every non-overlapping window once; the last batch padded, with mask 0 there."""
        ids = self._split(split)
        for windows, mask in padded_eval_indices(self.num_examples(split), batch_size,
                                                 process_index, process_count):
            yield {**self._windows(ids, windows * self.context), "mask": mask}

    def _windows(self, ids: np.ndarray, starts: np.ndarray) -> Batch:
        positions = starts[:, None] + np.arange(self.context + 1)
        chunk = ids[positions]
        return {"inputs": chunk[:, :-1], "targets": chunk[:, 1:]}

    def _split(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r}; its splits: "
                             f"{', '.join(self.splits)}")
        return self.splits[split]


def tiny_shakespeare(data_dir: str | None = None, context: int = 256) -> CharText:
    if context < 1:  # checked before the files are read
        raise ValueError(f"dataset.context={context} must be at least 1 (characters a model "
                         f"reads at once)")
    texts = {}
    for split, parts in SPLITS.items():
        texts[split] = "".join(_text(data_source("tiny_shakespeare", p, data_dir)) for p in parts)
    vocab = "".join(sorted(set(texts["train"])))
    dataset = CharText("tiny_shakespeare", vocab, {}, context)
    return dataclasses.replace(dataset, splits={s: dataset.encode(t) for s, t in texts.items()})


def _text(source) -> str:
    text = source[0]["text"]
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)
