"""ImageNet-scale image datasets read one example at a time through grain.

They do not fit in memory, so each process reads only its rows of every global batch, decoding
and augmenting them on the host (optionally in grain worker processes) while the accelerator
trains. The order of an epoch is a pure function of (seed, epoch), and any batch can be read
directly, so resuming mid-epoch reads nothing twice.
"""
import dataclasses
import math
import sys
from collections.abc import Iterator

import grain
from absl import flags
import numpy as np
from PIL import Image

from data.arrays import Batch, summary_line
from data.batching import full_batches, global_position, local_batch_size
from data.images import class_names
from data.local import read_image
from data.tfds_source import corrupt_record_error, data_source

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
NUM_CLASSES = {"imagenet2012": 1000, "imagenette": 10}


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Inception-style: a crop of 8-100 % of the area, aspect 3/4-4/3, resized to size x size."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch, cw = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
        if 0 < ch <= h and 0 < cw <= w:
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            return _resize(image[y:y + ch, x:x + cw], (size, size))
    return center_crop(image, size, size)  # a very elongated image: fall back


def center_crop(image: np.ndarray, resize_to: int, size: int) -> np.ndarray:
    """Resize the shorter side to `resize_to`, then cut the central size x size."""
    h, w = image.shape[:2]
    s = resize_to / min(h, w)
    image = _resize(image, (max(size, round(h * s)), max(size, round(w * s))))
    h, w = image.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return image[y:y + size, x:x + size]


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


def _normalize(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0 - MEAN) / STD


@dataclasses.dataclass(frozen=True)
class GrainImages:
    name: str
    sources: dict  # split -> tfds data source
    num_classes: int
    image_size: int = 224
    worker_count: int = 0       # grain worker processes decoding and augmenting; 0 = in-process
    prefetch: int = 8           # batches read ahead
    class_names: tuple[str, ...] = ()
    about: dict = dataclasses.field(default_factory=dict)
    task = "classification"

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 3)

    def num_examples(self, split: str) -> int:
        return len(self._source(split))

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return full_batches(self.num_examples(split), batch_size,
                            f"{split!r} examples of {self.name}")

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, split: str = "train",
                      process_index: int = 0, process_count: int = 1, start: int = 0
                      ) -> Iterator[Batch]:
        source = self._source(split)
        local = local_batch_size(batch_size, process_count)
        order = np.random.default_rng([seed, epoch]).permutation(len(source))
        size = self.image_size

        def read(j):  # j: this process's j-th example of the epoch
            position = global_position(j, batch_size, process_index, process_count)
            example = self._read(source, int(order[position]))
            rng = np.random.default_rng([seed, epoch, position])
            image = random_resized_crop(np.asarray(example["image"]), rng, size)
            if rng.random() < 0.5:
                image = image[:, ::-1]
            return {"inputs": image, "targets": np.int32(example["label"])}

        steps = self.steps_per_epoch(batch_size, split)
        dataset = grain.MapDataset.range(steps * local).map(read).batch(local)[start:]
        yield from self._iterate(dataset)

    def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        """Resize to 256/224 of the size, centre crop; the last batch padded, mask 0 there."""
        source = self._source(split)
        n = len(source)
        local = local_batch_size(batch_size, process_count)
        size = self.image_size

        def read(j):
            position = global_position(j, batch_size, process_index, process_count)
            example = self._read(source, position if position < n else 0)
            image = center_crop(np.asarray(example["image"]), round(size * 256 / 224), size)
            return {"inputs": image, "targets": np.int32(example["label"]),
                    "mask": np.bool_(position < n)}

        dataset = grain.MapDataset.range(math.ceil(n / batch_size) * local).map(read).batch(local)
        yield from self._iterate(dataset)

    def _iterate(self, dataset) -> Iterator[Batch]:
        for batch in grain_batches(dataset, self.worker_count, self.prefetch):
            yield {**batch, "inputs": _normalize(batch["inputs"])}

    def description(self) -> dict:
        return {"name": self.name, "task": self.task, "input_shape": list(self.input_shape),
                "classes": list(self.class_names), **self.about,
                "examples": {s: len(src) for s, src in self.sources.items()}}

    def summary(self) -> str:
        return summary_line(self, {s: len(src) for s, src in self.sources.items()})

    def model_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """uint8 images of `image_size` (e.g. `center_crop`ped) -> normalised model input."""
        return _normalize(np.asarray(inputs))

    def read_image_files(self, paths: list[str]) -> np.ndarray:
        """Image files as evaluation sees them: resized to 256/224 of the size, centre crop."""
        size = self.image_size
        return np.stack([center_crop(read_image(p, None), round(size * 256 / 224), size)
                         for p in paths])

    def _read(self, source, index: int):
        try:
            return source[index]
        except Exception as e:  # noqa: BLE001
            raise corrupt_record_error(source, index, e) from None

    def _source(self, split: str):
        if split not in self.sources:
            raise ValueError(f"{self.name} has no split {split!r}; its splits: "
                             f"{', '.join(self.sources)}")
        return self.sources[split]


def grain_batches(dataset, worker_count: int = 0, prefetch: int = 8) -> Iterator[Batch]:
    """The batches of a grain MapDataset, read ahead by threads, or by `worker_count` worker
    processes."""
    it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0 if worker_count else 8,
                                                   prefetch_buffer_size=prefetch))
    if worker_count:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (docs/design.md, 6)
            flags.FLAGS([sys.argv[0]], known_only=True)
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    yield from it


def grain_images(name: str, data_dir: str | None = None, image_size: int = 224,
                 worker_count: int = 0, prefetch: int = 8) -> GrainImages:
    """ImageNet's (or Imagenette's) train and validation splits, read per example;
    `image_size` 0 means 224."""
    image_size = image_size or 224
    splits = {"train": "train", "validation": "validation"}
    sources = {ours: data_source(name, theirs, data_dir) for ours, theirs in splits.items()}
    return GrainImages(name, sources, NUM_CLASSES[name], image_size, worker_count, prefetch,
                       class_names=class_names(sources["train"], NUM_CLASSES[name]),
                       about={"source": f"tensorflow-datasets {name}",
                              "preprocessing": f"training: random resized crop to {image_size}, "
                                               f"flip; evaluation: resize, centre crop; mean/std "
                                               f"per channel"})
