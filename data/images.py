"""Image classification datasets from tensorflow-datasets, decoded once into memory.

MNIST, Fashion-MNIST and CIFAR are tens to hundreds of MB: decoding them once and batching from
arrays keeps an accelerator fed (DESIGN.md section 6). Pixels stay uint8 in memory and are
normalised per batch on the host.
"""
import dataclasses
import functools

import numpy as np

from data.arrays import ArrayDataset, Batch
from data.batching import seeded_split
from data.tfds_source import data_source, read_all


def pad_crop_flip(batch: Batch, rng: np.random.Generator, rows: slice, global_size: int,
                  pad: int = 4) -> Batch:
    """CIFAR's augmentation: a random crop of the image padded by `pad` zeros, then a random
    horizontal flip. Drawn for the whole global batch; `rows` are this process's."""
    images = batch["inputs"]
    n, h, w, _ = images.shape
    dy, dx = (rng.integers(0, 2 * pad + 1, size=global_size)[rows] for _ in range(2))
    flip = rng.random(global_size)[rows] < 0.5
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(images)
    for i in range(n):
        crop = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return {**batch, "inputs": out}


def scale(batch: Batch, mean=None, std=None) -> Batch:
    """uint8 pixels -> float32 in [0, 1], then per-channel (x - mean) / std if given."""
    x = batch["inputs"].astype(np.float32) / 255.0
    if mean is not None:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return {**batch, "inputs": x}


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    num_classes: int
    mean: tuple[float, ...] | None = None   # per channel, of the training images in [0, 1]
    std: tuple[float, ...] | None = None
    augment: bool = False


SPECS = {
    "mnist": ImageSpec(10),
    "fashion_mnist": ImageSpec(10),
    "cifar10": ImageSpec(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment=True),
    "cifar100": ImageSpec(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), augment=True),
}


def tfds_images(name: str, data_dir: str | None = None, split_seed: int = 0,
                validation_fraction: float = 0.1) -> ArrayDataset:
    """`name`'s train and test splits in memory, and a validation split of
    `validation_fraction` of train (stratified, drawn by `split_seed`) for choosing the best
    checkpoint, so that the test split is scored once, at the end."""
    spec = SPECS[name]
    splits, names = {}, None
    for split in ("train", "test"):
        source = data_source(name, split, data_dir)
        arrays = read_all(source, ("image", "label"))
        splits[split] = {"inputs": arrays["image"].astype(np.uint8),
                         "targets": arrays["label"].astype(np.int32)}
        names = names or class_names(source, spec.num_classes)
    if validation_fraction:
        train = splits["train"]
        parts = seeded_split(train["targets"], validation_fraction, 0.0, split_seed, True)
        splits = {"train": {k: v[parts["train"]] for k, v in train.items()},
                  "validation": {k: v[parts["validation"]] for k, v in train.items()},
                  "test": splits["test"]}
    scaled = "pixels scaled to [0, 1]" + (
        "; per channel minus mean, over std; training: 4-pixel pad, random crop, flip"
        if spec.mean else "")
    held = (f"; validation: {validation_fraction:g} of train, stratified by split_seed "
            f"{split_seed}" if validation_fraction else "")
    return ArrayDataset(name, splits, spec.num_classes,
                        normalize=functools.partial(scale, mean=spec.mean, std=spec.std),
                        augment=pad_crop_flip if spec.augment else None, class_names=names,
                        about={"source": f"tensorflow-datasets {name}",
                               "preprocessing": scaled + held})


def class_names(source, num_classes: int) -> tuple[str, ...]:
    """The label names tfds records for a prepared dataset, or "0", "1", ... without them."""
    try:
        names = tuple(source.dataset_info.features["label"].names)
    except Exception:  # noqa: BLE001 - mock data and older preparations carry none
        names = ()
    return names if len(names) == num_classes else tuple(map(str, range(num_classes)))
