"""scikit-learn's bundled datasets: real data that needs no download.

`digits`: 1,797 8x8 handwritten digits (classification). `diabetes`: 442 patients, 10
measurements each, and a measure of disease progression one year later (regression).
"""
import importlib.util
import os

import numpy as np

from data.arrays import ArrayDataset
from data.batching import seeded_split

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1


def split_70_10_20(inputs: np.ndarray, targets: np.ndarray, split_seed: int,
                   stratify: bool) -> dict:
    """Train / validation / test splits (70 / 10 / 20 %), fixed by `split_seed`, stratified by
    class if `stratify`; each split keeps the examples' original order."""
    parts = seeded_split(targets, VALIDATION_FRACTION, TEST_FRACTION, split_seed, stratify)
    return {name: {"inputs": inputs[parts[name]], "targets": targets[parts[name]]}
            for name in ("train", "validation", "test")}


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's `load_digits()` images (1797, 8, 8) and targets, read from the file it
    ships without importing scikit-learn, whose import takes longer than a digits epoch."""
    spec = importlib.util.find_spec("sklearn")
    path = os.path.join((spec.submodule_search_locations or [""])[0], "datasets", "data",
                        "digits.csv.gz") if spec else ""
    if not os.path.isfile(path):  # a scikit-learn that keeps it elsewhere
        from sklearn.datasets import load_digits
        raw = load_digits()
        return raw.images, raw.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def digits(split_seed: int = 0) -> ArrayDataset:
    """Stratified train / validation / test splits (70 / 10 / 20 %), fixed by `split_seed`.

    Pixels are scaled from 0..16 to 0..1; images are (8, 8, 1) float32, labels int32.
    """
    pixels, targets = digits_arrays()
    images = (pixels / 16.0).astype(np.float32)[..., None]
    labels = targets.astype(np.int32)
    return ArrayDataset("digits", split_70_10_20(images, labels, split_seed, stratify=True),
                        num_classes=10, class_names=tuple(map(str, range(10))),
                        about={"source": "scikit-learn's digits",
                               "preprocessing": "pixels 0..16 scaled to [0, 1]; a stratified "
                                                f"70/10/20 split by split_seed {split_seed}"})


def diabetes(split_seed: int = 0) -> ArrayDataset:
    """Regression: 10 standardised measurements (age, sex, body-mass index, blood pressure, six
    blood serum values) -> disease progression after one year, in its own units (25-346).

    Train / validation / test splits of 70 / 10 / 20 %, fixed by `split_seed`. The targets are
    left in their units, so MSE and MAE read in them.
    """
    from sklearn.datasets import load_diabetes
    raw = load_diabetes()
    splits = split_70_10_20(raw.data.astype(np.float32), raw.target.astype(np.float32)[:, None],
                            split_seed, stratify=False)
    train = splits["train"]["inputs"]  # standardised with the training split's statistics only
    mean, std = train.mean(0), train.std(0)
    for arrays in splits.values():
        arrays["inputs"] = (arrays["inputs"] - mean) / std
    return ArrayDataset("diabetes", splits, num_classes=0, task="regression",
                        about={"source": "scikit-learn's diabetes",
                               "preprocessing": "measurements standardised by the training "
                                                f"split's statistics; a 70/10/20 split by "
                                                f"split_seed {split_seed}"})
