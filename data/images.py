"""Image classification datasets from tensorflow-datasets, decoded once into memory.

MNIST, Fashion-MNIST and CIFAR are tens to hundreds of MB: decoding them once and batching from
arrays keeps an accelerator fed (docs/design.md, section 6). Pixels stay uint8 in memory and are
normalised (and CIFAR's augmented) per batch: inside the compiled step when the training split
is kept on the device (`dataset.on_device`, the default), else on the host.
"""
import dataclasses

import numpy as np

from data.arrays import ArrayDataset, Augmentation, Batch, Normalization
from data.batching import seeded_split
from data.tfds_source import data_source, read_all


def crop_flip_draws(rng: np.random.Generator, global_size: int, pad: int = 4) -> dict:
    """The random part of CIFAR's augmentation for a whole global batch: each image's crop
    offsets into the image padded by `pad` zeros, and whether it is mirrored."""
    dy, dx = (rng.integers(0, 2 * pad + 1, size=global_size) for _ in range(2))
    return {"dy": dy.astype(np.int32), "dx": dx.astype(np.int32),
            "flip": rng.random(global_size) < 0.5}


def crop_flip(batch: Batch, draws: dict, xp=np, pad: int = 4) -> Batch:
    """Applies `draws` (`crop_flip_draws`, one row per image of `batch`): the crop of each image
    padded by `pad` zeros, then its mirror where drawn. One gather, written for numpy and
    jax.numpy alike (`xp`), so the host and the device produce the same pixels."""
    images = batch["inputs"]
    n, h, w, _ = images.shape
    padded = xp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows_NxH = draws["dy"][:, None] + xp.arange(h)
    cols_NxW = draws["dx"][:, None] + xp.arange(w)
    cols_NxW = xp.where(draws["flip"][:, None], cols_NxW[:, ::-1], cols_NxW)
    out = padded[xp.arange(n)[:, None, None], rows_NxH[:, :, None], cols_NxW[:, None, :]]
    return {**batch, "inputs": out}


CROP_FLIP = Augmentation(crop_flip_draws, crop_flip)


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
                        normalize=Normalization(pixels=True, mean=spec.mean, std=spec.std),
                        augment=CROP_FLIP if spec.augment else None, class_names=names,
                        about={"source": f"tensorflow-datasets {name}",
                               "preprocessing": scaled + held})


def class_names(source, num_classes: int) -> tuple[str, ...]:
    """The label names tfds records for a prepared dataset, or "0", "1", ... without them."""
    try:
        names = tuple(source.dataset_info.features["label"].names)
    except Exception:  # noqa: BLE001 - mock data and older preparations carry none
        names = ()
    return names if len(names) == num_classes else tuple(map(str, range(num_classes)))
