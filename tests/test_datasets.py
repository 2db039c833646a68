"""The tensorflow-datasets pipelines on tfds's mock data, and on the real data in ../shared."""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data
from conftest import ROOT, SHARED

IMAGES = {  # name: (input shape after preprocessing, classes, options)
    "mnist": ((28, 28, 1), 10, {}),
    "fashion_mnist": ((28, 28, 1), 10, {}),
    "cifar10": ((32, 32, 3), 10, {}),
    "cifar100": ((32, 32, 3), 100, {}),
    "imagenette": ((32, 32, 3), 10, {"image_size": 32}),
    "imagenet2012": ((32, 32, 3), 1000, {"image_size": 32}),
}
MOCK_EXAMPLES = 64
BATCH = 16
TEXT_BATCH, CONTEXT = 2, 2  # the mock Tiny Shakespeare is a few dozen characters


@pytest.fixture(params=sorted(IMAGES) + ["tiny_shakespeare"])
def mocked(request):
    name = request.param
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        options = {"context": CONTEXT} if name == "tiny_shakespeare" else IMAGES[name][2]
        yield name, data.load(name, **options)


def batch_size(dataset):
    return TEXT_BATCH if isinstance(dataset, data.CharText) else BATCH


def epoch(dataset, seed=0, number=0, **kw):
    return list(dataset.train_batches(batch_size(dataset), seed=seed, epoch=number, **kw))


def test_shapes_dtypes_and_ranges(mocked):
    name, dataset = mocked
    batch = epoch(dataset)[0]
    if name == "tiny_shakespeare":
        assert batch["inputs"].shape == batch["targets"].shape == (TEXT_BATCH, CONTEXT)
        assert batch["inputs"].dtype == np.int32
        assert 0 <= batch["inputs"].min() and batch["inputs"].max() < dataset.num_classes
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
        assert dataset.decode(dataset.encode(dataset.vocab)) == dataset.vocab
        return
    shape, classes, _ = IMAGES[name]
    assert dataset.input_shape == shape and dataset.num_classes == classes
    assert batch["inputs"].shape == (BATCH, *shape) and batch["inputs"].dtype == np.float32
    assert batch["targets"].dtype == np.int32
    assert 0 <= batch["targets"].min() and batch["targets"].max() < classes
    if name in ("mnist", "fashion_mnist"):  # scaled to [0, 1]
        assert 0.0 <= batch["inputs"].min() and batch["inputs"].max() <= 1.0
    else:  # normalised by per-channel mean and std
        assert -3.0 < batch["inputs"].min() < 0.0 < batch["inputs"].max() < 3.0


def test_same_seed_same_order_and_a_new_order_each_epoch(mocked):
    _, dataset = mocked
    first, again = epoch(dataset), epoch(dataset)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(first[0]["inputs"], epoch(dataset, number=1)[0]["inputs"])
    assert not np.array_equal(first[0]["inputs"], epoch(dataset, seed=1)[0]["inputs"])


def test_two_processes_read_disjoint_halves_that_make_the_global_batch(mocked):
    _, dataset = mocked
    whole = epoch(dataset, seed=3)
    halves = [epoch(dataset, seed=3, process_index=i, process_count=2) for i in range(2)]
    assert len(whole) == len(halves[0]) == len(halves[1]) > 0
    for g, p0, p1 in zip(whole, *halves):
        # the same examples, in the same rows, with the same augmentation
        np.testing.assert_array_equal(g["inputs"], np.concatenate([p0["inputs"], p1["inputs"]]))


@pytest.mark.parametrize("process_count", [1, 2])
def test_padded_evaluation_counts_every_example_once(mocked, process_count):
    name, dataset = mocked
    split = "validation" if name in ("tiny_shakespeare", "imagenette", "imagenet2012") else "test"
    size = batch_size(dataset)
    per_process = [list(dataset.eval_batches(split, size, process_index=i,
                                             process_count=process_count))
                   for i in range(process_count)]
    seen = []  # in global order: each batch's rows of process 0, then of process 1
    for parts in zip(*per_process):
        for b in parts:
            assert len(b["mask"]) == size // process_count
            seen += [x for x, m in zip(b["inputs"], b["mask"]) if m]
    assert len(seen) == dataset.num_examples(split)
    if name == "tiny_shakespeare":  # windows tile the text in order (it repeats: no set check)
        ids = dataset.splits[split]
        np.testing.assert_array_equal(np.concatenate(seen), ids[:len(seen) * CONTEXT])
    else:
        assert len({x.tobytes() for x in seen}) == len(seen)


def test_a_resumed_iterator_continues_with_exactly_the_next_batch(mocked):
    _, dataset = mocked
    full = epoch(dataset, seed=5)
    resumed = epoch(dataset, seed=5, start=2)
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_grain_worker_processes_give_the_same_batches():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        inline = data.load("imagenette", image_size=32)
        workers = data.load("imagenette", image_size=32, worker_count=2)
        for a, b in zip(epoch(inline), epoch(workers)):
            np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_a_dataset_that_is_not_prepared_names_the_command(tmp_path):
    with pytest.raises(ValueError, match=r"'mnist' \(split 'train'\) is not prepared in .*"
                                         r"`descent data prepare mnist --manual-dir DIR "
                                         f"--data-dir {tmp_path}`"):
        data.load("mnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="known: " + ", ".join(sorted(data.DATASETS))):
        data.load("svhn")
    with pytest.raises(ValueError, match="takes no option colour; its options: split_seed"):
        data.load("digits", colour=True)


def test_real_tiny_shakespeare_vocabulary_and_splits(prepared):
    text = data.load("tiny_shakespeare", data_dir=prepared)
    assert len(text.vocab) == 65
    assert {k: len(v) for k, v in text.splits.items()} == {"train": 1_003_854,
                                                           "validation": 111_540}
    assert text.decode(text.encode("ROMEO:")) == "ROMEO:"


def test_a_truncated_record_file_is_an_error_naming_it(prepared, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(prepared, copy)
    # train's file: it is read first, so the error comes before 60,000 images are decoded
    victim = next((copy / "mnist" / "3.0.1").glob("mnist-train.array_record*"))
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    with pytest.raises(ValueError, match=f"of {victim} .*truncated or corrupt"):
        data.load("mnist", data_dir=str(copy))


def test_real_mnist_prepared_offline_trains_the_cnn_to_98_5_percent_in_one_epoch(
        prepared, tmp_path, capsys):
    from experiments import run
    from experiments.config import load_config

    mnist = data.load("mnist", data_dir=prepared)
    # a stratified tenth of train is the validation split that picks the best checkpoint
    assert (mnist.num_examples("train"), mnist.num_examples("validation"),
            mnist.num_examples("test")) == (54_000, 6_000, 10_000)
    assert np.bincount(mnist.splits["test"]["targets"]).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    config = load_config(os.path.join(ROOT, "experiments", "configs", "mnist_cnn.py"))
    config.dataset.data_dir = prepared
    config.epochs = 1
    summary = run.train_and_evaluate(config, str(tmp_path))
    with capsys.disabled():
        print(f"\nreal MNIST, CNN, one epoch: test accuracy {summary['test']['accuracy']:.4f}")
    assert summary["test"]["examples"] == 10_000
    assert summary["test"]["accuracy"] >= 0.985


def test_prepare_prints_only_its_own_lines_and_leaves_no_empty_download_folders(tmp_path):
    if not os.path.isdir(SHARED) or importlib.util.find_spec("tensorflow") is None:
        pytest.skip(f"needs {SHARED} and TensorFlow to prepare Tiny Shakespeare")
    manual = os.path.join(SHARED, "tiny_shakespeare")
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "data", "prepare", "tiny_shakespeare",
         "--manual-dir", manual, "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        f"preparing tiny_shakespeare from {manual} ...",
        f"prepared tiny_shakespeare in {tmp_path / 'tiny_shakespeare' / '1.0.0'}; train with "
        f"--config.dataset.data_dir={tmp_path}"]
    assert result.stderr == ""  # no TensorFlow banners, no tfds progress bars
    assert sorted(os.listdir(tmp_path)) == ["tiny_shakespeare"]
    loud = subprocess.run(  # --verbose lets the libraries speak
        [sys.executable, "-m", "experiments", "data", "prepare", "tiny_shakespeare",
         "--manual-dir", manual, "--data-dir", str(tmp_path / "loud"), "--verbose"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert loud.returncode == 0 and "Downloading and preparing" in loud.stdout + loud.stderr
