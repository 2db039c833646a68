"""Input pipelines: datasets by name, yielding dicts of host numpy arrays per process.

Imports no model or training code. What the training loop needs of a dataset is written down
in `train.dataset.Dataset`; everything here meets it. Datasets that fit in memory are decoded
once into arrays (`ArrayDataset`); ImageNet-scale ones and large image folders are read per
example through grain (`GrainImages`, `FolderImages`); text is windows of character ids
(`CharText`), or of token ids memory-mapped from a corpus `descent data prepare text` wrote
(`Tokens`). scikit-learn's bundled datasets and the synthetic tasks need no download; your own
data comes in as `arrays`, `image_folder`, `csv` or `tokens`.

    dataset = data.load("csv", path="patients.csv", target="outcome")
    dataset = data.load("arrays", arrays={"x_train": x, "y_train": y})
"""
import dataclasses
import functools
import importlib
import inspect
import os
import re

# Each loader is imported when first used: a run reads one dataset, and the others' libraries
# (scikit-learn, grain, TensorFlow Datasets) take seconds to import.
_LOADERS = {
    "digits": ("data.bundled", "digits"),
    "diabetes": ("data.bundled", "diabetes"),
    "function": ("data.synthetic", "function"),
    "recall": ("data.synthetic", "recall"),
    "arrays": ("data.local", "arrays"),
    "image_folder": ("data.local", "image_folder"),
    "csv": ("data.local", "csv_table"),
    "mnist": ("data.images", "tfds_images"),
    "fashion_mnist": ("data.images", "tfds_images"),
    "cifar10": ("data.images", "tfds_images"),
    "cifar100": ("data.images", "tfds_images"),
    "imagenet2012": ("data.imagenet", "grain_images"),
    "imagenette": ("data.imagenet", "grain_images"),
    "tiny_shakespeare": ("data.text", "tiny_shakespeare"),
    "tokens": ("data.tokens", "tokens"),
}
DATASETS = tuple(_LOADERS)  # every dataset name
_BY_NAME = ("tfds_images", "grain_images")  # loaders that serve several datasets by name

# The package's classes, imported on first use like the loaders.
_CLASSES = {"ArrayDataset": "data.arrays", "Batch": "data.arrays", "CharText": "data.text",
            "Described": "data.description", "described": "data.description",
            "FolderImages": "data.local", "GrainImages": "data.imagenet",
            "FUNCTIONS": "data.synthetic", "Normalization": "data.arrays",
            "Tokens": "data.tokens"}


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")


def _loader(name: str):
    """The function that loads dataset `name`, taking only that dataset's options."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    module, function = _LOADERS[name]
    loader = getattr(importlib.import_module(module), function)
    return functools.partial(loader, name) if function in _BY_NAME else loader


# Options that name files or folders.
PATHS = ("path", "data_dir")

# Config fields every dataset takes: they shape batches, not what is read.
EVERY_DATASET = ("name", "batch_size", "eval_batch_size", "train_examples", "on_device")


# Datasets read from one file, which may be an object in a gs:// bucket (read whole, once).
IN_BUCKETS = ("csv", "arrays")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def check_path(option: str, value, dataset: str = "") -> None:
    """Refuses a URL (gs://, s3://, ...) given where a file or folder is read, unless it is the
    `gs://` file of a dataset read from one file (`IN_BUCKETS`): as a local path it would be a
    folder named "gs:", the bucket never read."""
    if not (isinstance(value, str) and URL.match(value)):
        return
    if value.startswith("gs://") and dataset in IN_BUCKETS and option != "dataset.data_dir":
        return
    raise ValueError(f"{option} {value!r} is a URL: descent reads data from a file system, or a "
                     f"CSV table or .npz in a gs:// bucket; mount the bucket (gcsfuse for gs://, "
                     f"mountpoint-s3 for s3://) and pass the mounted path")


def options(name: str) -> dict:
    """The options dataset `name` takes, with their defaults."""
    return {p.name: p.default for p in inspect.signature(_loader(name)).parameters.values()}


def load(name: str, **given):
    """Loads the dataset called `name` with its options (each loader takes only its own: see
    `options`); an unknown name or option lists the known ones. The dataset's `description()`
    records the name and every option, so `from_description` rebuilds it in another process."""
    known = options(name)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"dataset {name!r} takes no option {', '.join(unknown)}; its options: "
                         f"{', '.join(known) or 'none'}")
    for key in PATHS:
        check_path(f"dataset.{key}", given.get(key), name)
    dataset = _loader(name)(**given)
    recorded = {k: v for k, v in {**known, **given}.items() if k != "arrays"}  # not JSON
    for key in PATHS:  # recorded absolute: eval and predict then work from any directory
        if recorded.get(key) and not URL.match(recorded[key]):
            recorded[key] = os.path.abspath(recorded[key])
    return dataclasses.replace(dataset, about={**dataset.about, "name": name,
                                               "options": recorded})


def from_description(description: dict, **replaced):
    """The dataset a checkpoint's description names, read again, with `replaced` options (e.g.
    another data_dir); the files must still be those it was trained on."""
    name, recorded = description["name"], {**description.get("options", {}), **replaced}
    if name == "arrays" and "standardize" not in recorded:
        recorded["standardize"] = False  # recorded before float inputs were standardised
    if name == "arrays" and not recorded.get("path") and "arrays" not in recorded:
        raise ValueError("this run trained on arrays passed from Python, which its checkpoint "
                         "does not hold: pass them again, run.restore(workdir, dataset="
                         "data.load('arrays', arrays={...}))")
    try:
        dataset = load(name, **recorded)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"the data this run trained on is not where it was ({e}); if "
                                f"it moved, say where it is now with --data-path") from None
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


__all__ = ["ArrayDataset", "Batch", "CharText", "DATASETS", "Described", "EVERY_DATASET",
           "FUNCTIONS", "FolderImages", "GrainImages", "IN_BUCKETS", "Normalization", "PATHS",
           "check_path",
           "check_same", "described", "from_description", "load", "options"]
