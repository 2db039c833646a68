"""scikit-learn's bundled `digits`: 1,797 real 8x8 handwritten digits, no download needed."""
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from data.arrays import ArrayDataset

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1


def digits(split_seed: int = 0, data_dir: str | None = None) -> ArrayDataset:
    """Stratified train / validation / test splits (70 / 10 / 20 %), fixed by `split_seed`.

    The data ships inside scikit-learn, so `data_dir` is not used.

    Pixels are scaled from 0..16 to 0..1; images are (8, 8, 1) float32, labels int32.
    """
    raw = load_digits()
    images = (raw.images / 16.0).astype(np.float32)[..., None]
    labels = raw.target.astype(np.int32)
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=TEST_FRACTION, stratify=labels,
                                  random_state=split_seed)
    train, validation = train_test_split(
        rest, test_size=VALIDATION_FRACTION / (1 - TEST_FRACTION), stratify=labels[rest],
        random_state=split_seed)
    splits = {
        name: {"inputs": images[np.sort(part)], "targets": labels[np.sort(part)]}
        for name, part in (("train", train), ("validation", validation), ("test", test))
    }
    return ArrayDataset("digits", splits, num_classes=10)
