"""Your own data: numpy arrays (an .npz, or a dict from Python), a folder of images with a folder
per class, or a CSV table.

Each is read from `path`; where the files carry no split, one is drawn from `split_seed`
(`validation_fraction`, `test_fraction`; stratified for classes). Class names, shapes and the
normalisation are decided from the files (statistics from the training split only) and go into
the dataset's description, which every checkpoint stores with a fingerprint of the data, so a
later process rebuilds exactly the same examples or says what changed.
"""
import csv
import dataclasses
import hashlib
import io
import logging
import math
import os
import zipfile
from collections.abc import Iterator

import numpy as np

from data.arrays import ArrayDataset, Batch, Normalization, printable, summary_line
from data.batching import (full_batches, global_position, local_batch_size, padded_eval_indices,
                           seeded_split)

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # models compute in float32: larger ones are inf
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PIXELS = Normalization(pixels=True)  # uint8 pixels -> [0, 1]


# --- numpy arrays

def arrays(path: str = "", arrays: dict | None = None, split_seed: int = 0,
           validation_fraction: float = 0.1, test_fraction: float = 0.2,
           standardize: bool = True) -> ArrayDataset:
    """An .npz at `path` (or, from Python, a dict `arrays`) with Keras's keys: `x_train`,
    `y_train`, and optionally `x_test`, `y_test`, `x_validation`, `y_validation` and
    `class_names`. Missing validation or test splits are drawn from train.

    Integer targets (or strings) are classes; float targets are regression. uint8 inputs are
    pixels, scaled to [0, 1]; (N, H, W) images get a channel axis; float inputs are
    standardised per feature (the last axis) by the training split's mean and standard
    deviation, as a CSV table's columns are (unless `standardize` is off).
    """
    source = f"arrays from {path}" if arrays is None else "arrays passed from Python"
    if arrays is None:
        arrays = _read_npz(path)
    given = _splits_given(arrays, source)
    names = arrays.get("class_names")
    x_all = np.concatenate([np.asarray(x) for x, _ in given.values()])
    y_all = np.concatenate([np.asarray(y) for _, y in given.values()])
    task, targets, class_names = _targets(y_all, source, names)
    inputs = _inputs(x_all, source)
    bounds = np.cumsum([0] + [len(y) for _, y in given.values()])
    splits = {s: {"inputs": inputs[a:b], "targets": targets[a:b]}
              for s, a, b in zip(given, bounds[:-1], bounds[1:])}
    splits, drawn = _draw_missing(splits, task, split_seed, validation_fraction, test_fraction)
    if inputs.dtype == np.uint8:
        normalization, how = PIXELS, "uint8 pixels scaled to [0, 1]"
    else:
        normalization, how = _float_inputs(splits["train"]["inputs"], standardize)
        how = "float inputs " + how
    return _dataset("arrays", splits, task, class_names, source, how + drawn,
                    _fingerprint_arrays(arrays), normalize=normalization)


def _splits_given(arrays: dict, source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (x, y)} for the splits `arrays` holds, each checked: both keys, as many rows of
    x as of y, numbers that are finite, one shape of rows across splits."""
    if not len(arrays):
        raise ValueError(f"{source}: there are no arrays; save at least x_train and y_train, "
                         f"e.g. numpy.savez(path, x_train=x, y_train=y)")
    given = {}
    for split in SPLITS:
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None and y is None:
            continue
        if x is None or y is None:
            have, lack = (f"x_{split}", f"y_{split}") if y is None else (f"y_{split}",
                                                                          f"x_{split}")
            raise ValueError(f"{source}: {have} has no {lack}; give both, the inputs x_ and "
                             f"their targets y_ (keys: {', '.join(map(printable, arrays))})")
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
            raise ValueError(f"{source}: x_{split} has {_rows(x)} but y_{split} {_rows(y)}; "
                             f"they need one row per example each")
        for key, array in ((f"x_{split}", x), (f"y_{split}", y)):
            _check_finite(array, f"{source}, {key}")
        given[split] = (x, y)
    if "train" not in given:
        raise ValueError(f"{source} have no x_train and y_train; give at least those (and "
                         f"x_test, y_test, x_validation, y_validation if you have them)")
    if not len(given["train"][0]):
        raise ValueError(f"{source}: x_train and y_train have no rows")
    for split, (x, _) in given.items():
        if x.shape[1:] != given["train"][0].shape[1:] or x.dtype.kind != given[
                "train"][0].dtype.kind:
            raise ValueError(f"{source}: x_{split} holds rows of shape {x.shape[1:]} "
                             f"({x.dtype}) but x_train {given['train'][0].shape[1:]} "
                             f"({given['train'][0].dtype}); every split needs the same")
    return given


def _rows(array: np.ndarray) -> str:
    return "no rows (a scalar)" if array.ndim == 0 else f"{len(array)} rows"


def _check_finite(array: np.ndarray, where: str) -> None:
    """Refuses NaN or infinite numbers, naming the first: they train into a 'diverged' that
    blames the learning rate."""
    if array.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}[{', '.join(map(str, index))}] is {array[index]}: inputs and "
                         f"targets must be finite numbers; drop or fill in the missing ones")


def _read_npz(path: str) -> dict:
    """The arrays of the .npz at `path`; nothing in it is unpickled, and nothing that is not
    an archive of numeric arrays is read as one."""
    if not path:
        raise ValueError("dataset 'arrays' needs --config.dataset.path=FILE.npz (with x_train, "
                         "y_train, ...), or from Python data.load('arrays', arrays={...})")
    _existing(path, "an .npz file")
    fix = "save the arrays with numpy.savez(path, x_train=..., y_train=...)"
    if os.path.isdir(path):
        raise ValueError(f"{path} is not an .npz archive (a zip of numpy arrays); {fix}")
    content = _file_bytes(path)
    if not zipfile.is_zipfile(io.BytesIO(content)):  # which leaves its file at the end
        raise ValueError(f"{path} is not an .npz archive (a zip of numpy arrays); {fix}")
    arrays = {}
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as f:
            for key in f.files:
                try:
                    arrays[key] = f[key]
                except ValueError as e:  # numpy's hint for objects is to unpickle: never
                    said = ("holds Python objects, not numbers or text; descent reads no "
                            "pickled data" if "pickle" in str(e) else "is not a readable array")
                    raise ValueError(f"{path}: {key!r} {said}; {fix}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise ValueError(f"{path} is a damaged .npz archive ({printable(str(e))}); {fix}") \
            from None
    return arrays


def _inputs(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype.kind in "iu" and x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"{source}: integer inputs must be pixels in 0..255 (got "
                             f"{x.min()}..{x.max()}); pass floats for other values")
        x = x.astype(np.uint8)
    if x.dtype.kind not in "uf":
        raise ValueError(f"{source}: inputs of dtype {x.dtype} are neither pixels nor numbers")
    if x.ndim == 3:  # (N, H, W): grey images, the layout Keras's MNIST arrays have
        x = x[..., None]
    if x.dtype == np.uint8:
        return x
    if x.dtype.itemsize > 4 and np.abs(x).max(initial=0) > FLOAT32_MAX:
        raise ValueError(f"{source}: an input is {np.abs(x).max():g}, past the largest float32 "
                         f"({FLOAT32_MAX:.4g}) the model computes in; scale the inputs down")
    return x.astype(np.float32)


def _targets(y: np.ndarray, source: str, names=None) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """(task, targets, class names) of raw target values."""
    if y.dtype.kind == "f":
        return "regression", y.astype(np.float32).reshape(len(y), -1), ()
    if y.ndim > 1 and math.prod(y.shape[1:]) != 1:
        raise ValueError(f"{source}: targets of shape {y.shape[1:]} per row are classes only "
                         f"one per row; give float targets for regression of several values")
    if y.dtype.kind in "iub":
        y = y.astype(np.int64).reshape(-1)
        if y.min() < 0:
            raise ValueError(f"{source}: integer targets are class ids and must be >= 0 (got "
                             f"{y.min()})")
        count = int(y.max()) + 1
        given = tuple(str(n) for n in names) if names is not None else ()
        if given and len(given) < count:
            raise ValueError(f"{source}: class_names has {len(given)} names but the targets "
                             f"go up to class {count - 1}")
        if not given:
            _check_dense(y, count, source)
        _check_classes(len(given) or count, len(np.unique(y)), source)
        return "classification", y.astype(np.int32), given or tuple(map(str, range(count)))
    labels = np.asarray(y).astype(str).reshape(-1)
    classes = tuple(sorted(set(labels)))
    _check_classes(len(classes), len(classes), source)
    return "classification", np.searchsorted(classes, labels).astype(np.int32), classes


def _check_dense(y: np.ndarray, count: int, source: str) -> None:
    """Class ids are 0..K-1: ids of which most never occur (200000 among zeros) are a mistake
    that would make a model with 200,001 outputs."""
    present = len(np.unique(y))
    if count > 2 * present and count > present + 1:
        raise ValueError(f"{source}: the class ids go up to {count - 1} but only {present} of "
                         f"those {count:,} ids occur; number the classes 0..K-1 (e.g. "
                         f"numpy.unique(y, return_inverse=True)[1]), or give class_names")


def _check_classes(count: int, present: int, source: str) -> None:
    if count < 2 or present < 2:
        raise ValueError(f"{source}: the targets hold {present} class; a classifier needs "
                         f"examples of at least two (float targets are regression)")


def _draw_missing(splits: dict, task: str, seed: int, validation_fraction: float,
                  test_fraction: float) -> tuple[dict, str]:
    """Draws the validation and test splits the files do not have from train."""
    missing = {s: f for s, f in (("validation", validation_fraction), ("test", test_fraction))
               if s not in splits and f}
    if not missing:
        return splits, ""
    train = splits["train"]
    parts = seeded_split(train["targets"], missing.get("validation", 0.0),
                         missing.get("test", 0.0), seed, stratify=task == "classification")
    out = {**splits, **{s: {k: v[idx] for k, v in train.items()} for s, idx in parts.items()}}
    said = " and ".join(f"{s} {f:g}" for s, f in missing.items())
    return ({s: out[s] for s in SPLITS if s in out},
            f"; {said} of {'train' if len(splits) > 1 else 'the examples'} held out by "
            f"split_seed {seed}")


def _fingerprint_arrays(arrays: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes() if value.dtype.kind != "O" else repr(value.tolist()).encode())
    return digest.hexdigest()


def _dataset(name, splits, task, class_names, source, preprocessing, fingerprint, normalize=None):
    return ArrayDataset(name, splits, len(class_names) if task == "classification" else 0,
                        normalize=normalize, task=task, class_names=class_names,
                        about={"source": source, "preprocessing": preprocessing.lstrip("; "),
                               "fingerprint": fingerprint})


def _existing(path: str, what: str) -> str:
    if not (_object_exists(path) if path.startswith("gs://") else os.path.exists(path)):
        raise FileNotFoundError(f"dataset.path {path!r} does not exist; point it at {what}")
    return path


def _object_exists(path: str) -> bool:
    return _from_bucket(path, "reached", lambda p: p.exists())


def _from_bucket(path: str, doing: str, call):
    """`call` on the gs:// object at `path`; what the storage libraries raise (credentials, a
    network that cannot reach the bucket) becomes one line saying it cannot be `doing`."""
    try:
        return call(_in_bucket(path))
    except ValueError:  # descent's own line (gcsfs not installed)
        raise
    except Exception as e:  # noqa: BLE001 - the storage libraries raise many kinds
        raise ValueError(f"dataset.path {path!r} cannot be {doing} ({type(e).__name__}: "
                         f"{printable(str(e).splitlines()[0] if str(e) else '')[:200]})") from None


def _in_bucket(path: str):
    """The object at gs:// `path`, as etils' epath reaches it (through gcsfs, or TensorFlow's
    file system where it is installed); a bucket that cannot be reached is named in one line."""
    from etils import epath

    try:
        import gcsfs  # noqa: F401
    except ImportError:
        raise ValueError(f"dataset.path {path!r} needs gcsfs, which is not installed here: "
                         f"pip install 'descent[gcs]'") from None
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)  # a failure is named in one line
    return epath.Path(path)


def _file_bytes(path: str) -> bytes:
    """The bytes of the file (or gs:// object) at `path`."""
    if not path.startswith("gs://"):
        with open(path, "rb") as f:
            return f.read()
    return _from_bucket(path, "read", lambda p: p.read_bytes())


# --- a folder of images

def image_folder(path: str = "", image_size: int = 0, grayscale: bool = False,
                 split_seed: int = 0, validation_fraction: float = 0.1,
                 test_fraction: float = 0.2, max_in_memory_mb: int = 1024):
    """Images in a folder per class under `path` (PNG, JPEG, ...), or under `path/train/`,
    `path/validation/`, `path/test/` where the split is given; a split the folder lacks is
    drawn from train. The folders are splits only beside a `train/` folder: without one,
    every folder is a class, one named `test` or `validation` too. Images are decoded with
    Pillow as RGB (grey with `grayscale`) and resized to `image_size` x `image_size` (0: as
    they are, which must then be one size).

    Folders whose decoded images fit in `max_in_memory_mb` are decoded once into memory; larger
    ones are read one image at a time through grain, each process only its rows.
    """
    if not path:
        raise ValueError("dataset 'image_folder' needs --config.dataset.path=FOLDER, with a "
                         "folder of images per class in it")
    if not os.path.isdir(_existing(path, "a folder with a folder of images per class")):
        raise ValueError(f"dataset.path {path!r} is a file; image_folder reads a folder with a "
                         f"folder of images per class")
    files, classes = _image_files(path)
    channels = 1 if grayscale else 3
    size = (image_size, image_size) if image_size else _common_size(files, path)
    shape = (*size, channels)
    labels = {s: np.array([c for _, c in pairs], np.int32) for s, pairs in files.items()}
    paths = {s: [p for p, _ in pairs] for s, pairs in files.items()}
    if "train" not in paths:
        raise ValueError(f"{path} has validation or test folders but no train/ folder")
    missing = {"validation": validation_fraction, "test": test_fraction}
    drawn = {s: f for s, f in missing.items() if s not in paths and f}
    if drawn:
        parts = seeded_split(labels["train"], drawn.get("validation", 0.0),
                             drawn.get("test", 0.0), split_seed, stratify=True)
        every_path, every_label = paths["train"], labels["train"]
        for split, idx in parts.items():
            paths[split], labels[split] = [every_path[i] for i in idx], every_label[idx]
    held = " and ".join(f"{s} {f:g}" for s, f in drawn.items())
    about = {"source": f"images in {path}",
             "preprocessing": f"decoded as {'grey' if grayscale else 'RGB'}, "
                              f"{'resized to ' if image_size else ''}{size[0]}x{size[1]}, "
                              f"pixels scaled to [0, 1]"
                              + (f"; {held} of {'train' if len(files) > 1 else 'the images'}"
                                 f" held out by split_seed {split_seed}" if held else ""),
             "fingerprint": _fingerprint_files(path, files)}
    order = [s for s in SPLITS if s in paths]
    decoded_mb = sum(len(p) for p in paths.values()) * math.prod(shape) / 2**20
    if decoded_mb <= max_in_memory_mb:
        splits = {s: {"inputs": read_images(paths[s], shape), "targets": labels[s]}
                  for s in order}
        return ArrayDataset("image_folder", splits, len(classes),
                            normalize=PIXELS,
                            class_names=classes, about={**about, "read": "in memory"})
    return FolderImages("image_folder", {s: paths[s] for s in order},
                        {s: labels[s] for s in order}, classes, shape,
                        about={**about, "read": "per example through grain"})


def _image_files(root: str) -> tuple[dict[str, list[tuple[str, int]]], tuple[str, ...]]:
    """{split: [(file, class id), ...]} and the class names (sorted folder names)."""
    given = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    if "train" not in given:  # `test/` beside `cat/` and `dog/` is a class, not a split
        splits_alone = [s for s in given if _subfolders(os.path.join(root, s))]
        if splits_alone:  # classes inside test/: splits, but train/ is missing
            raise ValueError(f"{root} has {'/, '.join(splits_alone)}/ folders of classes but "
                             f"no train/ folder; add train/ with a folder per class (a folder "
                             f"named test or validation beside the others is a class)")
        given = []
    others = sorted(set(_subfolders(root)) - set(given))
    if given and others:
        raise ValueError(f"{root} holds split folders ({', '.join(given)}) and other folders "
                         f"({', '.join(map(printable, others[:3]))}); put the class folders "
                         f"inside {os.path.join(root, 'train')} (and validation/, test/)")
    tops = {s: os.path.join(root, s) for s in given} if given else {"train": root}
    classes = sorted({d for top in tops.values() for d in _subfolders(top)})
    if len(classes) < 2:
        raise ValueError(f"{root} holds {len(classes)} class folder(s): put each class's images "
                         f"in a folder of its own, at least two, e.g. "
                         f"{os.path.join(root, 'cat', '1.png')} and "
                         f"{os.path.join(root, 'dog', '1.png')}")
    files = {}
    for split, top in tops.items():
        pairs = []
        for c, name in enumerate(classes):
            folder = os.path.join(top, name)
            found = sorted(os.path.join(folder, f) for f in
                           (os.listdir(folder) if os.path.isdir(folder) else [])
                           if f.lower().endswith(IMAGE_SUFFIXES))
            if not found and (split == "train" or os.path.isdir(folder)):
                raise ValueError(f"{printable(folder)} holds no images "
                                 f"({', '.join(IMAGE_SUFFIXES)}); every class folder needs its "
                                 f"images directly inside it")
            pairs += [(f, c) for f in found]
        files[split] = pairs
    return files, tuple(classes)


def _subfolders(folder: str) -> list[str]:
    return [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))]


def _common_size(files: dict, root: str) -> tuple[int, int]:
    from PIL import Image

    sizes = {}
    for pairs in files.values():
        for path, _ in pairs:
            try:
                with Image.open(path) as image:
                    sizes.setdefault(image.size, path)
            except (OSError, Image.DecompressionBombError) as e:
                raise ValueError(f"{printable(path)} cannot be read as an image "
                                 f"({printable(str(e))})") from None
            if len(sizes) > 1:
                (a, pa), (b, pb) = list(sizes.items())[:2]
                raise ValueError(f"the images in {root} have different sizes ({a[0]}x{a[1]} "
                                 f"in {pa}, {b[0]}x{b[1]} in {pb}); set "
                                 f"--config.dataset.image_size=N to resize them all to N x N")
    (width, height), = sizes
    return height, width


def read_images(paths: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 images of `shape` (height, width, channels) decoded from `paths` with Pillow."""
    return np.stack([read_image(p, shape) for p in paths]) if paths else np.zeros(
        (0, *shape), np.uint8)


def read_image(path: str, shape: tuple[int, int, int] | None) -> np.ndarray:
    """uint8 (height, width, channels) pixels of the image file at `path`, resized to `shape`
    (1 channel: grey, else RGB); `shape` None: RGB at the file's own size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if shape and shape[2] == 1 else "RGB")
            if shape and image.size != (shape[1], shape[0]):
                image = image.resize((shape[1], shape[0]), Image.BILINEAR)
            pixels = np.asarray(image, np.uint8)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ValueError(f"{printable(path)} cannot be read as an image "
                         f"({printable(str(e))})") from None
    return pixels.reshape(*pixels.shape[:2], -1)


def _fingerprint_files(root: str, files: dict) -> str:
    digest = hashlib.sha256()
    for split in sorted(files):
        for path, label in files[split]:
            digest.update(f"{split}:{os.path.relpath(path, root)}:{label}:"
                          f"{os.path.getsize(path)};".encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class FolderImages:
    """Image files read one at a time through grain: this process's rows of every batch,
    decoded and resized on the host (optionally in `worker_count` processes)."""

    name: str
    paths: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    about: dict = dataclasses.field(default_factory=dict)
    worker_count: int = 0
    task = "classification"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def num_examples(self, split: str) -> int:
        return len(self._split(split))

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return full_batches(self.num_examples(split), batch_size, f"{split!r} images")

    def description(self) -> dict:
        return {"name": self.name, "task": self.task, "input_shape": list(self.input_shape),
                "classes": list(self.class_names), "outputs": self.num_outputs,
                "stored": "uint8", "normalization": PIXELS.record(), **self.about,
                "examples": {s: len(p) for s, p in self.paths.items()}}

    def summary(self) -> str:
        return summary_line(self, {s: len(p) for s, p in self.paths.items()})

    def model_inputs(self, inputs: np.ndarray) -> np.ndarray:
        return PIXELS({"inputs": np.asarray(inputs)})["inputs"]

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, split: str = "train",
                      process_index: int = 0, process_count: int = 1, start: int = 0
                      ) -> Iterator[Batch]:
        import grain

        paths, labels = self._split(split), self.labels[split]
        local = local_batch_size(batch_size, process_count)
        order = np.random.default_rng([seed, epoch]).permutation(len(paths))

        def read(j):
            i = int(order[global_position(j, batch_size, process_index, process_count)])
            return {"inputs": read_image(paths[i], self.input_shape), "targets": labels[i]}

        steps = self.steps_per_epoch(batch_size, split)
        yield from self._batches(grain.MapDataset.range(steps * local).map(read).batch(local)[
            start:])

    def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        paths, labels = self._split(split), self.labels[split]
        for idx, mask in padded_eval_indices(len(paths), batch_size, process_index,
                                             process_count):
            yield {"inputs": self.model_inputs(read_images([paths[i] for i in idx],
                                                           self.input_shape)),
                   "targets": labels[idx], "mask": mask}

    def _batches(self, dataset) -> Iterator[Batch]:
        from data.imagenet import grain_batches
        for batch in grain_batches(dataset, self.worker_count):
            yield {**batch, "inputs": self.model_inputs(batch["inputs"])}

    def _split(self, split: str) -> list[str]:
        if split not in self.paths:
            raise ValueError(f"{self.name} has no split {split!r}; its splits: "
                             f"{', '.join(self.paths)}")
        return self.paths[split]


# --- a CSV table

def csv_table(path: str = "", target: str = "", split_seed: int = 0,
              validation_fraction: float = 0.1, test_fraction: float = 0.2,
              standardize: bool = True) -> ArrayDataset:
    """A table with a header row. `target` names the column to predict (default: the last);
    integer or text targets are classes (names sorted, mapped to ids), other numbers are
    regression, in their own units (train with loss.name=mse). Every other column is a
    numeric feature, standardised with the training split's mean and standard deviation
    (unless `standardize` is off: then used as they are).
    """
    if not path:
        raise ValueError("dataset 'csv' needs --config.dataset.path=FILE.csv (a header row, then "
                         "one row per example)")
    header, rows, content = _read_table(_existing(path, "a CSV file with a header row"))
    target = target or header[-1]
    if target not in header:
        raise ValueError(f"dataset.target={target!r} is not a column of {path}; its "
                         f"columns: {', '.join(map(printable, header))}")
    t = header.index(target)
    features = [c for i, c in enumerate(header) if i != t]
    if not features:
        raise ValueError(f"{path} has only the target column {target!r}; it "
                         f"needs features too")
    task, targets, classes = _table_targets([r[t] for r in rows], path, target)
    inputs = feature_matrix(rows, [i for i in range(len(header)) if i != t], header, path)
    parts = seeded_split(targets if task == "classification" else np.zeros(len(rows)),
                         validation_fraction, test_fraction, split_seed,
                         stratify=task == "classification")
    splits = {s: {"inputs": inputs[idx], "targets": targets[idx]} for s, idx in parts.items()}
    normalization, how = _float_inputs(splits["train"]["inputs"], standardize)
    fingerprint = hashlib.sha256(content).hexdigest()
    dataset = _dataset(
        "csv", splits, task, classes, f"the table {path} (target {target!r})",
        f"{len(features)} feature columns {how}; validation {validation_fraction:g} and test "
        f"{test_fraction:g} held out by split_seed {split_seed}", fingerprint,
        normalize=normalization)
    return dataclasses.replace(dataset, about={**dataset.about, "target": target,
                                               "features": features})


def _float_inputs(train: np.ndarray, standardize: bool) -> tuple[Normalization, str]:
    """The one rule for float features in every format: standardised by the training split's
    mean and standard deviation per feature, or, with `standardize` off, used as they are."""
    if not standardize:
        return Normalization(), "used as they are (dataset.standardize=false)"
    return Normalization.of(train), ("standardised by the training split's mean and standard "
                                     "deviation")


def _read_table(path: str) -> tuple[list[str], list[list[str]], bytes]:
    """(header, rows, the file's bytes) of the CSV table at `path`."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a readable CSV file; point at the table")
    content = _file_bytes(path)
    try:  # utf-8-sig: a byte-order mark (spreadsheets write one) is not the first column's name
        text = content.decode("utf-8-sig")
        table = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except (csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable CSV file ({e})") from None
    if len(table) < 2:
        raise ValueError(f"{path} needs a header row and at least one row of data")
    header = [c.strip() for c in table[0]]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise ValueError(f"{path}: the header names the column(s) "
                         f"{', '.join(map(repr, twice))} more than once; give "
                         f"every column its own name")
    for number, row in enumerate(table[1:], 2):
        if len(row) != len(header):
            raise ValueError(f"{path} line {number} has {len(row)} fields but the header has "
                             f"{len(header)}")
    return header, table[1:], content


# What tables write for a value they lack: as a target it is no class and no number.
MISSING = ("", "na", "n/a", "nan", "null", "none", "?", "-", "inf", "+inf", "-inf", "infinity",
           "+infinity", "-infinity")


def _table_targets(values: list[str], path: str, column: str):
    values = [v.strip() for v in values]
    missing = next((i for i, v in enumerate(values) if v.lower() in MISSING), None)
    if missing is not None:
        said = f"{values[missing]!r}, a missing value" if values[missing] else "empty"
        raise ValueError(f"{path} line {missing + 2}: the target {column!r} is "
                         f"{said}; drop the row or fill it in")
    if all(_is_int(v) for v in values):
        ids = sorted({int(v) for v in values})
        names = tuple(map(str, ids))
        task, targets = "classification", np.searchsorted(ids, [int(v) for v in values])
    elif all(_is_float(v) for v in values):
        numbers = np.array(values, np.float64)
        past = np.flatnonzero(np.abs(numbers) > FLOAT32_MAX)
        if len(past):
            raise ValueError(f"{path} line {past[0] + 2}: the target {column!r} is "
                             f"{values[past[0]]}, past the largest float32 ({FLOAT32_MAX:.4g}); "
                             f"scale the targets down")
        return "regression", numbers.astype(np.float32)[:, None], ()
    else:
        names = tuple(sorted(set(values)))
        task, targets = "classification", np.searchsorted(names, values)
    if len(names) < 2:
        raise ValueError(f"{path}: the target {column!r} holds one class "
                         f"({names[0]!r}) in all {len(values)} rows; a classifier "
                         f"needs at least two (or set dataset.target to another column)")
    return task, targets.astype(np.int32), names


def feature_matrix(rows: list[list[str]], columns: list[int], header: list[str],
                   path: str) -> np.ndarray:
    """The named numeric columns of `rows` as float32; a cell that is not a number is named."""
    out = np.empty((len(rows), len(columns)), np.float32)
    for r, row in enumerate(rows):
        for j, c in enumerate(columns):
            try:
                value = float(row[c])
            except ValueError:
                value = None
            if value is not None and abs(value) <= FLOAT32_MAX:  # NaN is not <= anything
                out[r, j] = value
            else:
                what = "not a number" if value is None else "not a finite float32 number"
                raise ValueError(f"{path} line {r + 2}, column {header[c]!r}: "
                                 f"{row[c]!r} is {what}; feature columns must be "
                                 f"numeric (drop the column or row, fill the value in, or "
                                 f"encode it as numbers)")
    return out


def read_table_features(dataset, path: str) -> np.ndarray:
    """The feature columns a CSV run trained on, by name, from another CSV (its target column
    may be there or not), raw: `dataset.model_inputs` standardises them."""
    header, rows, _ = _read_table(path)
    names = dataset.about["features"]
    missing = [n for n in names if n not in header]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(map(printable, missing))} the "
                         f"run was trained on")
    return feature_matrix(rows, [header.index(n) for n in names], header, path)


def check_prediction_files(paths: list[str], dataset=None) -> None:
    """What `descent predict` checks of the files it is given before it reads them. Without
    `dataset`, what needs no run (checked before one is restored): each .npy is an array file
    of finite numbers with rows, not Python objects. With the run's `dataset`: the .npy rows
    have its input shape (and are pixels where it read pixels), and a warning names each image
    that will be resized to its inputs (a 300x200 photo for a model of 8x8 digits). CSV files
    are checked as they are read (`read_table_features`)."""
    arrays = all(p.endswith(".npy") for p in paths)
    if dataset is None:
        for path in paths if arrays else ():
            _read_array_file(path)
        for path in paths if not arrays else ():
            if path.lower().endswith(".csv") and os.path.isfile(path):
                _read_table(path)
        for path in _image_paths(paths) if not arrays else ():
            _image_size(path)
        return
    if dataset.description().get("name") == "csv":
        return
    if arrays:
        for path in paths:
            _check_rows(_read_array_file(path), dataset, path)
        return
    shape = tuple(dataset.input_shape)
    if len(shape) != 3 or hasattr(dataset, "read_image_files"):  # those crop by design
        return
    for path in _image_paths(paths):
        width, height = _image_size(path)
        if (height, width) != shape[:2]:
            log.warning(f"{printable(path)} is {width}x{height} pixels; resized to the run's "
                        f"{shape[1]}x{shape[0]} inputs")


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) of the image file at `path`, from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{printable(path)} cannot be read as an image "
                         f"({printable(str(e))})") from None


def _image_paths(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                            if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path) and path.lower().endswith(IMAGE_SUFFIXES):
            found.append(path)
    return found


_SAVE_ROWS = "save an array of one row per example with numpy.save"


def _read_array_file(path: str) -> np.ndarray:
    """The array of the .npy at `path`, refused where it is not an array file, holds Python
    objects (nothing is unpickled), is not numbers, has no rows or numbers that are not
    finite."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is not a file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # numpy would try it as a zip or a pickle
        raise ValueError(f"{path} is not a readable .npy array; {_SAVE_ROWS}")
    try:
        rows = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # never numpy's hint to unpickle
        said = "holds Python objects" if "pickle" in str(e) else "is not a readable .npy array"
        raise ValueError(f"{path} {said}; {_SAVE_ROWS}") from None
    if rows.dtype.kind not in "iuf":
        raise ValueError(f"{path} holds {rows.dtype} values, not numbers; {_SAVE_ROWS}")
    if rows.ndim == 0 or not len(rows):
        raise ValueError(f"{path} holds no rows (shape {rows.shape}); {_SAVE_ROWS}")
    _check_finite(rows, path)
    return rows


def as_input_rows(rows: np.ndarray, dataset) -> np.ndarray:
    """Rows of (H, W) grey images get the channel axis of a run's (H, W, 1) inputs, as training
    gave one to the same images (`arrays`); other rows are returned as they are."""
    shape = tuple(dataset.input_shape)
    if len(shape) == 3 and shape[-1] == 1 and rows.shape[1:] == shape[:2]:
        return rows[..., None]
    return rows


def _check_rows(rows: np.ndarray, dataset, path: str) -> None:
    """Refuses rows of another shape than `dataset`'s inputs (a channel axis aside, see
    `as_input_rows`), or that are not pixels (integers 0..255) where it read pixels."""
    shape = tuple(dataset.input_shape)
    rows = as_input_rows(rows, dataset)
    if rows.shape[1:] != shape:
        raise ValueError(f"{path} holds an array of shape {rows.shape}; this run reads rows of "
                         f"shape {shape}: give ({'N, ' + ', '.join(map(str, shape))})")
    if _reads_pixels(dataset) and (rows.dtype.kind == "f" or rows.min() < 0
                                   or rows.max() > 255):
        raise ValueError(f"{path} holds {rows.dtype} values {rows.min()}..{rows.max()}; this "
                         f"run reads pixels, integers 0..255")


def _reads_pixels(dataset) -> bool:
    return dataset.description().get("stored") == "uint8"  # as its checkpoint records


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
