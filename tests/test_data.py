import subprocess
import sys

import numpy as np
import pytest

import data


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_digits_splits_are_disjoint_stratified_and_scaled(digits):
    sizes = {s: digits.num_examples(s) for s in ("train", "validation", "test")}
    assert sizes == {"train": 1257, "validation": 180, "test": 360}
    assert digits.input_shape == (8, 8, 1)
    images = {s: digits.splits[s]["inputs"].reshape(sizes[s], -1) for s in sizes}
    for s, arr in images.items():
        assert arr.dtype == np.float32 and arr.min() >= 0.0 and arr.max() <= 1.0
        assert digits.splits[s]["targets"].dtype == np.int32
    seen = {s: {a.tobytes() for a in arr} for s, arr in images.items()}
    assert not seen["test"] & seen["train"]  # no test image is trained on
    test_counts = np.bincount(digits.splits["test"]["targets"], minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # stratified: ~36 per class


def test_digits_are_scikit_learns_read_without_importing_it():
    from sklearn.datasets import load_digits

    from data.bundled import digits_arrays
    images, targets = digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(targets, reference.target)


@pytest.mark.parametrize("n, classes, fraction, seed", [
    (1797, 10, 0.2, 0), (1437, 10, 0.1 / 0.8, 3), (60000, 10, 0.1, 1), (50, 3, 0.3, 7),
    (41, 7, 0.5, 2), (442, 1, 0.2, 0), (30, 0, 0.25, 5)])
def test_splits_are_those_scikit_learn_draws(n, classes, fraction, seed):
    """Stratified (uneven classes, tied leftovers) and plain splits equal train_test_split's,
    so datasets split as they always have, without importing scikit-learn."""
    from sklearn.model_selection import train_test_split

    from data.batching import split_off
    rng = np.random.default_rng(n)
    labels = rng.integers(0, classes, n) if classes else None
    if classes:
        labels[:2 * classes] = np.repeat(np.arange(classes), 2)  # two of every class at least
    kept, drawn = split_off(n, fraction, labels, seed)
    want_kept, want_drawn = train_test_split(np.arange(n), test_size=fraction, stratify=labels,
                                             random_state=seed)
    np.testing.assert_array_equal(kept, want_kept)
    np.testing.assert_array_equal(drawn, want_drawn)


def test_loading_a_dataset_imports_only_its_own_libraries():
    """`import data`, the training code and loading digits stay free of grain, TensorFlow
    Datasets and scikit-learn (seconds of a short run's start): only their datasets need them."""
    script = ("import sys, data, experiments.run\n"
              "data.load('digits')\n"
              "print(sorted(m for m in ('grain', 'tensorflow_datasets', 'sklearn')"
              " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    assert data.options("mnist")["validation_fraction"] == 0.1  # found when asked for
    assert isinstance(data.CharText, type) and isinstance(data.GrainImages, type)


def test_the_split_is_fixed_by_its_seed():
    a, b, c = data.load("digits"), data.load("digits"), data.load("digits", split_seed=1)
    np.testing.assert_array_equal(a.splits["test"]["inputs"], b.splits["test"]["inputs"])
    assert not np.array_equal(a.splits["test"]["inputs"], c.splits["test"]["inputs"])


def order(dataset, seed, epoch, **kw):
    return np.concatenate([b["targets"] for b in dataset.train_batches(32, seed=seed, epoch=epoch, **kw)])


def image_keys(batches):
    return [img.tobytes() for b in batches for img in b["inputs"]]


def test_shuffle_is_deterministic_per_seed_and_new_each_epoch(digits):
    batches = lambda **kw: list(digits.train_batches(32, **kw))  # noqa: E731
    assert image_keys(batches(seed=0, epoch=0)) == image_keys(batches(seed=0, epoch=0))
    assert image_keys(batches(seed=0, epoch=0)) != image_keys(batches(seed=0, epoch=1))
    assert image_keys(batches(seed=0, epoch=0)) != image_keys(batches(seed=1, epoch=0))
    epoch = batches(seed=0, epoch=0)
    assert len(epoch) == 1257 // 32 and all(len(b["targets"]) == 32 for b in epoch)
    assert len(set(image_keys(epoch))) == len(image_keys(epoch))  # no example twice in an epoch


def test_process_shards_are_disjoint_and_make_the_global_batch(digits):
    whole = list(digits.train_batches(32, seed=3, epoch=2))
    parts = [list(digits.train_batches(32, seed=3, epoch=2, process_index=i, process_count=2))
             for i in range(2)]
    for g, p0, p1 in zip(whole, *parts):
        assert len(p0["targets"]) == len(p1["targets"]) == 16
        assert sorted(image_keys([p0, p1])) == sorted(image_keys([g]))


@pytest.mark.parametrize("process_count", [1, 2])
def test_padded_evaluation_counts_every_example_once(digits, process_count):
    keys = []
    for i in range(process_count):
        for b in digits.eval_batches("test", 128, process_index=i, process_count=process_count):
            assert len(b["targets"]) == 128 // process_count
            keys += [img.tobytes() for img, m in zip(b["inputs"], b["mask"]) if m]
    expected = [img.tobytes() for img in digits.splits["test"]["inputs"]]
    assert sorted(keys) == sorted(expected)


def test_errors_name_the_fix(digits):
    with pytest.raises(ValueError, match="known: " + ", ".join(sorted(data.DATASETS))):
        data.load("cifar11")
    with pytest.raises(ValueError, match="splits: train, validation, test"):
        list(digits.eval_batches("dev", 32))
    with pytest.raises(ValueError, match="use a smaller batch size"):
        digits.steps_per_epoch(5000)
    with pytest.raises(ValueError, match="does not divide over 3 processes; use 30 or 33"):
        next(digits.train_batches(32, seed=0, epoch=0, process_count=3))


def test_a_training_subset_is_stratified_seeded_and_leaves_other_splits(digits):
    small = digits.subset("train", 100, seed=0)
    counts = np.bincount(small.splits["train"]["targets"], minlength=10)
    assert counts.sum() == 100 and counts.min() == counts.max() == 10
    np.testing.assert_array_equal(small.splits["test"]["inputs"], digits.splits["test"]["inputs"])
    again, other = digits.subset("train", 100, seed=0), digits.subset("train", 100, seed=1)
    np.testing.assert_array_equal(small.splits["train"]["inputs"], again.splits["train"]["inputs"])
    assert not np.array_equal(small.splits["train"]["inputs"], other.splits["train"]["inputs"])
    with pytest.raises(ValueError, match="train_examples=5000 must be between 1 and the 1257"):
        digits.subset("train", 5000, seed=0)


def test_function_is_a_regression_dataset_scored_against_the_noiseless_curve():
    clean, noisy = data.load("function"), data.load("function", noise=0.5)
    assert clean.task == "regression" and clean.num_outputs == 1 and clean.input_shape == (1,)
    assert {s: clean.num_examples(s) for s in clean.splits} == {
        "train": 1400, "validation": 200, "test": 400}
    x, y = clean.splits["test"]["inputs"][:, 0], clean.splits["test"]["targets"][:, 0]
    np.testing.assert_allclose(y, np.sin(np.pi * x) + 0.5 * np.sin(4 * np.pi * x), atol=1e-5)
    residual = noisy.splits["train"]["targets"] - clean.splits["train"]["targets"]
    assert 0.45 < residual.std() < 0.55  # noise on the training targets only
    np.testing.assert_array_equal(noisy.splits["test"]["targets"], clean.splits["test"]["targets"])
    assert data.load("function", function="ripple").input_shape == (2,)
    with pytest.raises(ValueError, match="unknown dataset.function 'cubic'; known: wave, ripple"):
        data.load("function", function="cubic")


def test_recall_labels_each_sequence_with_its_first_token():
    recall = data.load("recall", distance=20, vocab=5, num_examples=100)
    train = recall.splits["train"]
    assert recall.input_shape == (21, 5) and recall.num_classes == 5
    np.testing.assert_array_equal(train["inputs"].argmax(-1)[:, 0], train["targets"])
    assert np.allclose(train["inputs"].sum(-1), 1.0)  # one token per step


def test_diabetes_is_real_regression_standardised_on_its_training_split():
    diabetes = data.load("diabetes")
    sizes = {s: diabetes.num_examples(s) for s in diabetes.splits}
    assert sum(sizes.values()) == 442  # every patient once, about 70 / 10 / 20 %
    assert abs(sizes["validation"] - 44) <= 1 and abs(sizes["test"] - 88) <= 1
    train = diabetes.splits["train"]
    np.testing.assert_allclose(train["inputs"].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train["inputs"].std(0), 1, atol=1e-4)
    assert 25 <= train["targets"].min() and train["targets"].max() <= 346
