"""Reading prepared tensorflow-datasets datasets without TensorFlow: `tfds.data_source`."""
import glob
import logging
import os

import numpy as np

# what `descent data prepare` builds from the files tfds would download (or, for ImageNet, the
# files its builder reads from a manual directory)
PREPARABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenette", "imagenet2012",
              "tiny_shakespeare")


def default_data_dir(data_dir: str | None) -> str:
    return (data_dir or os.environ.get("TFDS_DATA_DIR")
            or os.path.expanduser("~/tensorflow_datasets"))


def data_source(name: str, split: str, data_dir: str | None):
    """Random access to a prepared split; a dataset that is not prepared names the command that
    prepares it (and, when this module's logger shows DEBUG, as under --verbose, what tfds
    said)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises several kinds for "not there"
        where = default_data_dir(data_dir)
        if any(glob.glob(os.path.join(where, name, *["*"] * depth, "*.tfrecord*"))
               for depth in (1, 2)):  # name/version/ or name/config/version/
            state = (f"is prepared in {where} as TFRecord files, which descent reads only as "
                     f"ArrayRecord (without TensorFlow)")
            fix = (f"build it again: tfds build {name} --data_dir {where} "
                   f"--file_format=array_record --overwrite")
        else:
            state = f"(split {split!r}) is not prepared in {where}"
            fix = (f"prepare it with `descent data prepare {name} --manual-dir DIR --data-dir "
                   f"{where}`, DIR holding the files tfds would download" if name in PREPARABLE
                   else f"prepare it on a machine that can download it, with TensorFlow "
                        f"installed: tfds build {name} --data_dir {where} "
                        f"--file_format=array_record, then copy {os.path.join(where, name)} here")
        verbose = logging.getLogger(__name__).isEnabledFor(logging.DEBUG)
        reason = f" [tfds: {type(e).__name__}: {e}]" if verbose else ""
        raise ValueError(f"dataset {name!r} {state}; {fix}{reason}") from None


def read_all(source, keys: tuple[str, ...], chunk: int = 2048) -> dict[str, np.ndarray]:
    """Decodes every example of `source` once into arrays, in batches (10k/s against 3.5k/s
    one at a time, docs/design.md, section 6). A record that cannot be read names its file."""
    parts = {k: [] for k in keys}
    batched = True
    for start in range(0, len(source), chunk):
        indices = list(range(start, min(start + chunk, len(source))))
        try:
            try:
                examples = source.__getitems__(indices) if batched else None
            except TypeError:  # tfds.testing.mock_data's sources take one index at a time
                batched = False
            if not batched:
                examples = [source[i] for i in indices]
        except Exception as e:  # noqa: BLE001
            raise corrupt_record_error(source, start, e) from None
        for k in keys:
            parts[k].append(np.stack([np.asarray(ex[k]) for ex in examples]))
    return {k: np.concatenate(v) for k, v in parts.items()}


def corrupt_record_error(source, index: int, error: Exception) -> ValueError:
    files = [str(f) for f in getattr(getattr(source, "data_source", None), "_paths", [])] or [
        str(getattr(source, "dataset_info", {}) and source.dataset_info.data_dir)]
    return ValueError(f"cannot read the records from {index} on of {', '.join(files)} "
                      f"({type(error).__name__}: {str(error)[:200]}); the file is truncated or "
                      f"corrupt: prepare the dataset again")
