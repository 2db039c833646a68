"""scikit-learn's bundled datasets: real data that needs no download.

`digits`: 1,797 8x8 handwritten digits (classification). `diabetes`: 442 patients, 10
measurements each, and a measure of disease progression one year later (regression).
"""
import numpy as np
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import train_test_split

from data.arrays import ArrayDataset

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1


def split_70_10_20(inputs: np.ndarray, targets: np.ndarray, split_seed: int,
                   stratify: bool) -> dict:
    """Train / validation / test splits (70 / 10 / 20 %), fixed by `split_seed`, stratified by
    class if `stratify`; each split keeps the examples' original order."""
    idx = np.arange(len(targets))
    labels = targets if stratify else None
    rest, test = train_test_split(idx, test_size=TEST_FRACTION, stratify=labels,
                                  random_state=split_seed)
    train, validation = train_test_split(
        rest, test_size=VALIDATION_FRACTION / (1 - TEST_FRACTION),
        stratify=None if labels is None else labels[rest], random_state=split_seed)
    return {name: {"inputs": inputs[np.sort(part)], "targets": targets[np.sort(part)]}
            for name, part in (("train", train), ("validation", validation), ("test", test))}


def digits(split_seed: int = 0, data_dir: str | None = None) -> ArrayDataset:
    """Stratified train / validation / test splits (70 / 10 / 20 %), fixed by `split_seed`.

    The data ships inside scikit-learn, so `data_dir` is not used.

    Pixels are scaled from 0..16 to 0..1; images are (8, 8, 1) float32, labels int32.
    """
    raw = load_digits()
    images = (raw.images / 16.0).astype(np.float32)[..., None]
    labels = raw.target.astype(np.int32)
    return ArrayDataset("digits", split_70_10_20(images, labels, split_seed, stratify=True),
                        num_classes=10)


def diabetes(split_seed: int = 0, data_dir: str | None = None) -> ArrayDataset:
    """Regression: 10 standardised measurements (age, sex, body-mass index, blood pressure, six
    blood serum values) -> disease progression after one year, in its own units (25-346).

    Train / validation / test splits of 70 / 10 / 20 %, fixed by `split_seed`; `data_dir` is
    not used. The targets are left in their units, so MSE and MAE read in them.
    """
    raw = load_diabetes()
    splits = split_70_10_20(raw.data.astype(np.float32), raw.target.astype(np.float32)[:, None],
                            split_seed, stratify=False)
    train = splits["train"]["inputs"]  # standardised with the training split's statistics only
    mean, std = train.mean(0), train.std(0)
    for arrays in splits.values():
        arrays["inputs"] = (arrays["inputs"] - mean) / std
    return ArrayDataset("diabetes", splits, num_classes=0, task="regression")
