"""Every dataset in `data` meets the contract training relies on (train/dataset.py): it is a
`Dataset`, it has exactly the capabilities it is known for, its methods take what the Protocols
say, and its members behave as documented. The tfds datasets run on `tfds.testing.mock_data`."""
import contextlib
import inspect
from typing import NamedTuple

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import data
from data import tokens
from train.dataset import Dataset, InMemory, Preprocesses, ReadsImageFiles, Text
from train.trainer import Trainer

from helpers import tiny_config

CAPABILITIES = (InMemory, Text, Preprocesses, ReadsImageFiles)
IN_MEMORY = {"InMemory", "Preprocesses"}
BATCH, TEXT_BATCH = 8, 2  # the mock Tiny Shakespeare holds 7 windows of 2 characters


def small_files(root):
    """A user's own data, small: an .npz of uint8 images, a CSV table, a folder of PNGs."""
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", x_train=rng.integers(0, 256, (60, 6, 6), dtype=np.uint8),
             y_train=np.arange(60) % 3)
    rows = [f"{a:.3f},{b:.1f},{'yes' if a > 0 else 'no'}" for a, b in rng.normal(size=(60, 2))]
    (root / "table.csv").write_text("x,y,label\n" + "\n".join(rows) + "\n")
    for c, name in enumerate(("cat", "dog")):
        (root / "folder" / name).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) // (c + 1)
            Image.fromarray(pixels).save(root / "folder" / name / f"{i}.png")
    (root / "text.txt").write_text("to be, or not to be:\nthat is the question.\n" * 20)
    tokens.prepare("tokens", [str(root / "text.txt")], "char", str(root))


# id -> (dataset name, options with {root} for the test's folder, its capabilities)
CASES = {
    "digits": ("digits", {}, IN_MEMORY),
    "diabetes": ("diabetes", {}, IN_MEMORY),
    "function": ("function", {"num_examples": 100}, IN_MEMORY),
    "recall": ("recall", {"num_examples": 100}, IN_MEMORY),
    "arrays npz": ("arrays", {"path": "{root}/images.npz"}, IN_MEMORY),
    "arrays from python": ("arrays", {"arrays": "python"}, IN_MEMORY),
    "csv": ("csv", {"path": "{root}/table.csv", "target": "label"}, IN_MEMORY),
    "image_folder": ("image_folder", {"path": "{root}/folder"}, IN_MEMORY),
    "image_folder read per example": ("image_folder", {"path": "{root}/folder",
                                                       "max_in_memory_mb": 0}, {"Preprocesses"}),
    "mnist": ("mnist", {}, IN_MEMORY),
    "fashion_mnist": ("fashion_mnist", {}, IN_MEMORY),
    "cifar10": ("cifar10", {}, IN_MEMORY),
    "cifar100": ("cifar100", {}, IN_MEMORY),
    "imagenette": ("imagenette", {"image_size": 16}, {"Preprocesses", "ReadsImageFiles"}),
    "imagenet2012": ("imagenet2012", {"image_size": 16}, {"Preprocesses", "ReadsImageFiles"}),
    "tiny_shakespeare": ("tiny_shakespeare", {"context": 2}, {"Text"}),
    "tokens": ("tokens", {"path": "{root}/tokens", "context": 2}, {"Text"}),
}
TFDS = {"mnist", "fashion_mnist", "cifar10", "cifar100", "imagenette", "imagenet2012",
        "tiny_shakespeare"}
PYTHON_ARRAYS = {"x_train": np.arange(80, dtype=np.float32).reshape(40, 2),
                 "y_train": np.arange(40) % 2}


def test_every_dataset_in_the_catalogue_is_checked():
    assert {name for name, _, _ in CASES.values()} == set(data.DATASETS)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    small_files(root)
    return root


class Case(NamedTuple):
    dataset: Dataset
    options: dict
    capabilities: set[str]
    batch_size: int
    id: str


def loaded(case_id, root):
    name, options, capabilities = CASES[case_id]
    options = {k: PYTHON_ARRAYS if v == "python" else v.format(root=root)
               if isinstance(v, str) else v for k, v in options.items()}
    mocked = (tfds.testing.mock_data(num_examples=64) if name in TFDS
              else contextlib.nullcontext())
    with mocked:  # tfds's mock data is read lazily too: the whole test runs inside it
        dataset = data.load(name, **options)
        yield Case(dataset, options, capabilities,
                   TEXT_BATCH if isinstance(dataset, Text) else BATCH, case_id)


def having(capability: str) -> list[str]:
    return sorted(k for k, (_, _, capabilities) in CASES.items() if capability in capabilities)


@pytest.fixture(params=sorted(CASES))
def case(request, root):
    yield from loaded(request.param, root)


@pytest.fixture(params=having("InMemory"))
def in_memory(request, root):
    yield from loaded(request.param, root)


@pytest.fixture(params=having("Text"))
def text(request, root):
    yield from loaded(request.param, root)


@pytest.fixture(params=having("ReadsImageFiles"))
def reads_image_files(request, root):
    yield from loaded(request.param, root)


def test_a_dataset_has_the_capabilities_it_is_known_for(case):
    dataset, capabilities = case.dataset, case.capabilities
    assert isinstance(dataset, Dataset)
    assert {p.__name__ for p in CAPABILITIES if isinstance(dataset, p)} == capabilities


def test_its_methods_take_what_the_protocols_say(case):
    dataset = case.dataset
    for protocol in (Dataset, *CAPABILITIES):
        if not isinstance(dataset, protocol):
            continue
        for member, declared in vars(protocol).items():
            if inspect.isfunction(declared) and not member.startswith("_"):
                assert_accepts(getattr(dataset, member), declared, f"{protocol.__name__}.{member}")


def assert_accepts(method, declared, what):
    """`method` takes every parameter `declared` names, passed the same way (by position or
    by keyword), with a default where `declared` has one; its own extras have defaults."""
    ours = inspect.signature(method).parameters
    theirs = dict(list(inspect.signature(declared).parameters.items())[1:])  # without self
    for name, p in theirs.items():
        assert name in ours, f"{what}: no parameter {name!r}"
        assert ours[name].kind == p.kind, f"{what}: {name!r} is {ours[name].kind}, not {p.kind}"
        if p.default is not inspect.Parameter.empty:
            assert ours[name].default == p.default, f"{what}: {name!r} default"
    for name, p in ours.items():
        assert name in theirs or p.default is not inspect.Parameter.empty, \
            f"{what}: its own parameter {name!r} needs a default"


def test_its_members_are_consistent(case):
    dataset = case.dataset
    assert dataset.task in ("classification", "regression")
    assert isinstance(dataset.class_names, tuple)
    if dataset.task == "regression":
        assert dataset.class_names == ()
    else:
        assert len(dataset.class_names) in (0, dataset.num_outputs)
    assert dataset.num_outputs >= 1
    batch_size = case.batch_size
    assert 1 <= dataset.steps_per_epoch(batch_size) <= dataset.num_examples("train") // batch_size
    assert isinstance(dataset.summary(), str) and "\n" not in dataset.summary()


def test_training_batches_are_shaped_and_a_pure_function_of_seed_and_epoch(case):
    dataset, batch_size = case.dataset, case.batch_size
    first = list(dataset.train_batches(batch_size, seed=3, epoch=1))
    again = list(dataset.train_batches(batch_size, seed=3, epoch=1))
    assert len(first) == dataset.steps_per_epoch(batch_size)
    for a, b in zip(first, again):
        assert a.keys() == b.keys() >= {"inputs", "targets"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    batch = first[0]
    assert batch["inputs"].shape == (batch_size, *dataset.input_shape)
    targets = batch["targets"]
    if dataset.task == "classification":
        assert np.issubdtype(targets.dtype, np.integer)
        assert 0 <= targets.min() and targets.max() < dataset.num_outputs
    else:
        assert targets.dtype == np.float32 and targets.shape == (batch_size, dataset.num_outputs)
    # from batch `start` on: the rest of the same epoch, as a resumed run reads it
    late = next(dataset.train_batches(batch_size, seed=3, epoch=1, start=len(first) - 1))
    np.testing.assert_array_equal(late["inputs"], first[-1]["inputs"])
    other = list(dataset.train_batches(batch_size, seed=3, epoch=2))
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, other))


def test_evaluation_batches_cover_every_example_once(case):
    dataset = case.dataset
    split = "test" if "test" in dataset.description()["examples"] else "validation"
    batches = list(dataset.eval_batches(split, BATCH))
    assert all(b["inputs"].shape[0] == BATCH == len(b["mask"]) for b in batches)
    masks = np.concatenate([b["mask"] for b in batches])
    n = dataset.num_examples(split)
    # the real examples first, each once; the last batch padded with masked rows
    np.testing.assert_array_equal(masks, np.arange(len(masks)) < n)
    assert len(masks) - n < BATCH
    if isinstance(dataset, InMemory) and isinstance(dataset, Preprocesses):  # in order, whole
        stored = dataset.device_arrays(split)
        inputs = np.concatenate([b["inputs"] for b in batches])[:n]
        targets = np.concatenate([b["targets"] for b in batches])[:n]
        np.testing.assert_array_equal(targets, stored["targets"])
        np.testing.assert_array_equal(inputs, dataset.model_inputs(stored["inputs"]))


def test_the_description_rebuilds_the_same_dataset(case):
    dataset, options, batch_size = case.dataset, case.options, case.batch_size
    described = dataset.description()
    assert described["classes"] == list(dataset.class_names)
    again = data.from_description(described, **({"arrays": options["arrays"]}
                                                 if "arrays" in options else {}))
    assert again.description() == described
    a, b = (next(d.train_batches(batch_size, seed=1, epoch=0)) for d in (dataset, again))
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])


# Datasets whose description holds their preprocessing: `predict` needs none of their files.
DESCRIBED = set(having("InMemory")) | {"image_folder read per example", "tiny_shakespeare",
                                       "tokens"}


def test_the_description_alone_predicts_as_the_dataset_does(case):
    """Every in-memory dataset, a folder read per example and character-level text stand in for
    themselves from their description (the same shapes, outputs, classes, model inputs to the
    bit, and text's encoding); ImageNet-style reading is read again from its files."""
    dataset = case.dataset
    described = data.described(dataset.description())
    if case.id not in DESCRIBED:
        assert described is None
        return
    assert isinstance(described, Dataset) and isinstance(described, Preprocesses)
    for member in ("task", "class_names", "input_shape", "num_outputs"):
        assert getattr(described, member) == getattr(dataset, member), member
    assert described.steps_per_epoch(case.batch_size) == dataset.steps_per_epoch(case.batch_size)
    if isinstance(dataset, Text):  # the vocabulary is described: text encodes and decodes alike
        assert isinstance(described, Text) and described.context == dataset.context
        text = "".join(dataset.class_names[::-1]) or "the question: to be"
        np.testing.assert_array_equal(described.encode(text), dataset.encode(text))
        assert described.decode(dataset.encode(text)) == text
        with pytest.raises(ValueError, match="characters not in the|cannot encode '\u2603'"):
            described.encode("\u2603")
        return
    assert not isinstance(described, Text)
    raw = (dataset.device_arrays("train")["inputs"][:BATCH] if isinstance(dataset, InMemory)
           else np.stack([np.asarray(Image.open(p).convert("RGB"))
                          for p in dataset.paths["train"][:BATCH]]))
    np.testing.assert_array_equal(described.model_inputs(raw), dataset.model_inputs(raw))
    with pytest.raises(ValueError, match="was not read: only its description"):
        next(described.eval_batches("test", BATCH))


def test_in_memory_plans_read_the_same_batches_as_the_host(in_memory):
    dataset = in_memory.dataset
    arrays = jax.device_put(dataset.device_arrays("train"))
    read = jax.jit(dataset.device_batch)
    plans = list(dataset.train_plans(BATCH, seed=2, epoch=1, start=1))
    host = list(dataset.train_batches(BATCH, seed=2, epoch=1, start=1))
    assert len(plans) == len(host) == dataset.steps_per_epoch(BATCH) - 1
    for plan, batch in list(zip(plans, host))[:2]:
        on_device = read(arrays, plan)
        np.testing.assert_array_equal(np.asarray(on_device["targets"]), batch["targets"])
        # XLA fuses standardisation ((x - mean) / std) and may round its last bit otherwise
        np.testing.assert_allclose(np.asarray(on_device["inputs"]), batch["inputs"],
                                   rtol=1e-6, atol=1e-6)
    kept = dataset.subset("train", 2 * BATCH, seed=0)
    assert isinstance(kept, InMemory) and kept.num_examples("train") == 2 * BATCH


def test_text_round_trips_through_its_ids(text):
    dataset = text.dataset
    text = "".join(dataset.class_names[::-1])
    assert dataset.decode(dataset.encode(text)) == text


def test_image_files_read_to_model_inputs(reads_image_files, tmp_path):
    dataset = reads_image_files.dataset
    paths = []
    for i, size in enumerate([(40, 30), (20, 50)]):  # any size: resized and cropped
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(paths[-1])
    inputs = dataset.model_inputs(dataset.read_image_files(paths))
    assert inputs.shape == (2, *dataset.input_shape)


def test_an_object_that_is_not_a_dataset_is_refused_naming_what_it_lacks():
    class Listed:  # a user's dataset written before it had to name its classes
        name, task, input_shape, num_outputs = "mine", "classification", (4,), 2

        def num_examples(self, split): ...
        def steps_per_epoch(self, batch_size): ...
        def train_batches(self, batch_size, *, seed, epoch, start=0, process_index=0,
                          process_count=1): ...
        def eval_batches(self, split, batch_size, *, process_index=0, process_count=1): ...
        def description(self): ...
        def summary(self): ...

    with pytest.raises(TypeError, match=r"^Listed is not a dataset training can read: it has "
                                        r"no class_names \(see train.dataset.Dataset\)$"):
        Trainer(tiny_config(), model=None, dataset=Listed())  # refused before any model
