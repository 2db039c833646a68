"""A trained run's dataset as its checkpoint describes it, without its files: what `predict`
and `sample` need (the input shape, the classes or regression outputs, how raw inputs become
model inputs, `Normalization`, and a text's vocabulary) and nothing they would have to read.
Training and evaluation read the data itself (`data.from_description`)."""
import dataclasses
from collections.abc import Iterator

import numpy as np

from data.arrays import Batch, Normalization, summary_line
from data.batching import full_batches
from data.text import CharText
from data.tokens import Tokens

# What a description must hold to stand in for its dataset; a checkpoint written before these
# were recorded (or of a dataset that records no `Normalization`) rebuilds from its files.
NEEDED = ("task", "input_shape", "classes", "outputs", "stored", "normalization", "examples")


@dataclasses.dataclass(frozen=True)
class Described:
    name: str
    task: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    num_outputs: int
    normalization: Normalization
    recorded: dict

    @property
    def about(self) -> dict:
        return self.recorded  # the source, features and target of a table, ...

    @property
    def num_classes(self) -> int:
        return self.num_outputs if self.task == "classification" else 0

    def num_examples(self, split: str) -> int:
        return int(self.recorded["examples"][split])

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return full_batches(self.num_examples(split), batch_size, f"{split!r} examples")

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, start: int = 0,
                      process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
        raise self._no_data()

    def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        raise self._no_data()

    def description(self) -> dict:
        return self.recorded

    def summary(self) -> str:
        return summary_line(self, self.recorded["examples"])

    def model_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Raw inputs, as the dataset stored its own, -> what the model takes."""
        return self.normalization({"inputs": np.asarray(inputs)})["inputs"]

    def _no_data(self) -> ValueError:
        return ValueError(f"the run's data ({self.recorded.get('source', self.name)}) was not "
                          f"read: only its description, which predicts but cannot train or "
                          f"evaluate")


@dataclasses.dataclass(frozen=True)
class DescribedText(Described):
    """A character-level text run's dataset from its description: the vocabulary is its class
    names, so text is encoded and decoded (for `sample`) without the training text."""

    @property
    def vocab(self) -> str:
        return "".join(self.class_names)

    @property
    def context(self) -> int:
        return self.input_shape[0]

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return full_batches(self.recorded["train_windows"], batch_size, "training windows")

    encode = CharText.encode  # the very rules of the dataset it stands for
    decode = CharText.decode


@dataclasses.dataclass(frozen=True)
class DescribedTokens(DescribedText):
    """A token corpus run's dataset from its description, which holds its tokenizer."""
    unit = "tokens"

    @property
    def tokenizer_json(self) -> str:
        return self.recorded["tokenizer"]

    tokenizer = Tokens.tokenizer
    encode = Tokens.encode
    decode = Tokens.decode


def described(description: dict) -> Described | None:
    """The dataset `description` stands for, from the description alone; None where it lacks
    what that takes (then the data is read again)."""
    if any(key not in description for key in NEEDED):
        return None
    kind = {"characters": DescribedText, "tokens": DescribedTokens}.get(
        description.get("text"), Described)
    return kind(description["name"], description["task"], tuple(description["classes"]),
                tuple(description["input_shape"]), int(description["outputs"]),
                Normalization.from_record(description["normalization"]), description)
