"""Input pipelines: datasets by name, yielding dicts of host numpy arrays per process.

Imports no model or training code. What the training loop needs of a dataset is written down
in `train.dataset.Dataset`; everything here meets it. Datasets that fit in memory are decoded
once into arrays (`ArrayDataset`); ImageNet-scale ones and large image folders are read per
example through grain (`GrainImages`, `FolderImages`); text is windows of character ids
(`CharText`). scikit-learn's bundled datasets and the synthetic tasks need no download; your own
data comes in as `arrays`, `image_folder` or `csv`.

    dataset = data.load("csv", path="patients.csv", target="outcome")
    dataset = data.load("arrays", arrays={"x_train": x, "y_train": y})
"""
import dataclasses
import functools
import inspect

from data.arrays import ArrayDataset, Batch
from data.bundled import diabetes, digits
from data.imagenet import GrainImages, grain_images
from data.images import tfds_images
from data.local import FolderImages, arrays, csv_table, image_folder
from data.synthetic import FUNCTIONS, function, recall
from data.text import CharText, tiny_shakespeare

DATASETS = {
    "digits": digits,
    "diabetes": diabetes,
    "function": function,
    "recall": recall,
    "arrays": arrays,
    "image_folder": image_folder,
    "csv": csv_table,
    "mnist": functools.partial(tfds_images, "mnist"),
    "fashion_mnist": functools.partial(tfds_images, "fashion_mnist"),
    "cifar10": functools.partial(tfds_images, "cifar10"),
    "cifar100": functools.partial(tfds_images, "cifar100"),
    "imagenet2012": functools.partial(grain_images, "imagenet2012"),
    "imagenette": functools.partial(grain_images, "imagenette"),
    "tiny_shakespeare": tiny_shakespeare,
}

# Config fields every dataset takes: they shape batches, not what is read.
EVERY_DATASET = ("name", "batch_size", "eval_batch_size", "train_examples", "on_device")


def options(name: str) -> dict:
    """The options dataset `name` takes, with their defaults."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return {p.name: p.default for p in inspect.signature(DATASETS[name]).parameters.values()}


def load(name: str, **given):
    """Loads the dataset called `name` with its options (each loader takes only its own: see
    `options`); an unknown name or option lists the known ones. The dataset's `description()`
    records the name and every option, so `from_description` rebuilds it in another process."""
    known = options(name)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"dataset {name!r} takes no option {', '.join(unknown)}; its options: "
                         f"{', '.join(known) or 'none'}")
    dataset = DATASETS[name](**given)
    recorded = {k: v for k, v in {**known, **given}.items() if k != "arrays"}  # not JSON
    return dataclasses.replace(dataset, about={**dataset.about, "name": name,
                                               "options": recorded})


def from_description(description: dict, **replaced):
    """The dataset a checkpoint's description names, read again, with `replaced` options (e.g.
    another data_dir); the files must still be those it was trained on."""
    name, recorded = description["name"], {**description.get("options", {}), **replaced}
    if name == "arrays" and not recorded.get("path") and "arrays" not in recorded:
        raise ValueError("this run trained on arrays passed from Python, which its checkpoint "
                         "does not hold: pass them again, run.restore(workdir, dataset="
                         "data.load('arrays', arrays={...}))")
    try:
        dataset = load(name, **recorded)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"the data this run trained on is not where it was: {e}") from None
    if description.get("train_examples"):
        dataset = dataset.subset("train", description["train_examples"],
                                 description["train_examples_seed"])
    check_same(dataset, description)
    return dataset


def check_same(dataset, description: dict) -> None:
    """Refuses data that differs from what `description` recorded (other files, other classes)."""
    now = dataset.description()
    for key, what in (("fingerprint", "its files' contents or names"),
                      ("classes", "its classes"), ("examples", "its split sizes")):
        if key in description and description[key] != now.get(key):
            where = description.get("source", description["name"])
            raise ValueError(f"the data of this run changed since it trained ({what} differ: "
                             f"{where}); restore it, or train a new run on the new data")


__all__ = ["ArrayDataset", "Batch", "CharText", "DATASETS", "EVERY_DATASET", "FUNCTIONS",
           "FolderImages", "GrainImages", "check_same", "from_description", "load", "options"]
