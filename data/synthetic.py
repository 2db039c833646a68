"""Synthetic tasks with a known answer, for experiments that need one: a function to fit
(regression) and a token to recall across a gap (memory). Each is a pure function of its
options and `split_seed`, so a checkpoint's config rebuilds exactly the same data."""
import numpy as np

from data.arrays import ArrayDataset

SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}

# name -> (input dimensions, f: (N, dims) array in [-1, 1]^dims -> (N,) targets)
FUNCTIONS = {
    # a slow wave with a fast one on top: what a linear model cannot bend to
    "wave": (1, lambda x: np.sin(np.pi * x[:, 0]) + 0.5 * np.sin(4 * np.pi * x[:, 0])),
    # concentric ripples that fade outwards: a 2-D surface
    "ripple": (2, lambda x: np.cos(3 * np.pi * np.hypot(x[:, 0], x[:, 1]))
               * np.exp(-2 * np.hypot(x[:, 0], x[:, 1]))),
}


def _split(inputs: np.ndarray, targets: np.ndarray) -> dict:
    """Consecutive 70 / 10 / 20 % slices of examples that are already in random order."""
    n = len(targets)
    edges = np.cumsum([0] + [round(f * n) for f in SPLIT_FRACTIONS.values()])
    edges[-1] = n
    return {name: {"inputs": inputs[a:b], "targets": targets[a:b]}
            for name, a, b in zip(SPLIT_FRACTIONS, edges[:-1], edges[1:])}


def function(function: str = "wave", num_examples: int = 2000, noise: float = 0.0,
             split_seed: int = 0) -> ArrayDataset:
    """Regression of the function called `function` (`FUNCTIONS`) at `num_examples` points drawn
    uniformly from [-1, 1]^dims, split 70 / 10 / 20 %. `noise` adds Gaussian noise of that
    standard deviation to the training targets only: validation and test measure the distance
    to the function itself."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown dataset.function {function!r}; known: {', '.join(FUNCTIONS)}")
    if num_examples < 10 or noise < 0:
        raise ValueError(f"dataset.num_examples must be >= 10 and dataset.noise >= 0, got "
                         f"{num_examples} and {noise}")
    dims, f = FUNCTIONS[function]
    rng = np.random.default_rng([split_seed, 1])
    x = rng.uniform(-1, 1, (num_examples, dims)).astype(np.float32)
    splits = _split(x, f(x).astype(np.float32)[:, None])
    train = splits["train"]
    train["targets"] = train["targets"] + noise * rng.standard_normal(
        train["targets"].shape).astype(np.float32)
    return ArrayDataset(f"function:{function}", splits, num_classes=0, task="regression")


def recall(distance: int = 10, vocab: int = 8, num_examples: int = 6000, split_seed: int = 0
           ) -> ArrayDataset:
    """Memory: a sequence of `distance` + 1 random tokens (one-hot, `vocab` of them) whose
    label is its first token, `distance` steps before the last. Everything after the first
    token is a distractor, so a net must carry the first token's identity across the whole
    sequence; chance is 1/vocab. Inputs are (distance + 1, vocab) float32, read one row per
    time step by a recurrent net. Split 70 / 10 / 20 %."""
    if distance < 1 or vocab < 2 or num_examples < 10:
        raise ValueError(f"dataset.distance must be >= 1, dataset.vocab >= 2 and "
                         f"dataset.num_examples >= 10, got {distance}, {vocab}, {num_examples}")
    rng = np.random.default_rng([split_seed, 2])
    tokens = rng.integers(0, vocab, (num_examples, distance + 1))
    inputs = np.eye(vocab, dtype=np.float32)[tokens]
    return ArrayDataset(f"recall:{distance}", _split(inputs, tokens[:, 0].astype(np.int32)),
                        num_classes=vocab)
