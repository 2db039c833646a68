"""Input pipelines: datasets by name, yielding dicts of host numpy arrays per process.

Imports no model or training code; the training loop only needs `train_batches`,
`eval_batches` and `steps_per_epoch` of what `load` returns. Datasets that fit in memory are
decoded once into arrays (`ArrayDataset`); ImageNet-scale ones are read per example through
grain (`GrainImages`); text is windows of character ids (`CharText`). scikit-learn's bundled
datasets and the synthetic tasks need no download.
"""
import functools
import inspect

from data.arrays import ArrayDataset, Batch
from data.bundled import diabetes, digits
from data.imagenet import GrainImages, grain_images
from data.images import tfds_images
from data.synthetic import FUNCTIONS, function, recall
from data.text import CharText, tiny_shakespeare

DATASETS = {
    "digits": digits,
    "diabetes": diabetes,
    "function": function,
    "recall": recall,
    "mnist": functools.partial(tfds_images, "mnist"),
    "fashion_mnist": functools.partial(tfds_images, "fashion_mnist"),
    "cifar10": functools.partial(tfds_images, "cifar10"),
    "cifar100": functools.partial(tfds_images, "cifar100"),
    "imagenet2012": functools.partial(grain_images, "imagenet2012"),
    "imagenette": functools.partial(grain_images, "imagenette"),
    "tiny_shakespeare": tiny_shakespeare,
}


def load(name: str, **options):
    """Loads the dataset called `name` with its `options` (data_dir, split_seed, and its own
    fields such as image_size or worker_count); unknown names and options list the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    loader = DATASETS[name]
    accepted = [p for p in inspect.signature(loader).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
                         f"its options: {', '.join(accepted)}")
    return loader(**options)


__all__ = ["ArrayDataset", "Batch", "CharText", "DATASETS", "FUNCTIONS", "GrainImages", "load"]
