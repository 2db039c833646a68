"""What every dataset shares: full batches per epoch, each process's rows of a global batch,
padded evaluation batches, and seeded (stratified) splits. One copy, for every kind of data.

A global batch of `batch_size` rows is split over processes in blocks: process p reads rows
[p * local, (p + 1) * local) with local = batch_size / process_count, so any number of
processes sees the same global batches.
"""
import math
from collections.abc import Iterator

import numpy as np


def local_batch_size(batch_size: int, process_count: int) -> int:
    if batch_size % process_count:
        lower = batch_size // process_count * process_count
        nearest = " or ".join(str(b) for b in (lower, lower + process_count) if b > 0)
        raise ValueError(f"dataset.batch_size={batch_size} does not divide over "
                         f"{process_count} processes; use {nearest}")
    return batch_size // process_count


def full_batches(examples: int, batch_size: int, what: str) -> int:
    """Full global batches in `examples` (the remainder is dropped in training)."""
    steps = examples // batch_size
    if steps == 0:
        raise ValueError(f"dataset.batch_size={batch_size} exceeds the {examples} {what}; use a "
                         f"smaller batch size")
    return steps


def train_rows(order: np.ndarray, batch_size: int, steps: int, *, start: int = 0,
               process_index: int = 0, process_count: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(step, this process's items of global batch `step`) for steps `start` .. `steps` - 1,
    global batch `step` being `order[step * batch_size:(step + 1) * batch_size]`."""
    local = local_batch_size(batch_size, process_count)
    rows = slice(process_index * local, (process_index + 1) * local)
    for step in range(start, steps):
        yield step, order[step * batch_size:(step + 1) * batch_size][rows]


def global_position(j: int, batch_size: int, process_index: int, process_count: int) -> int:
    """Where this process's `j`-th item of an epoch stands in the epoch's global order."""
    local = local_batch_size(batch_size, process_count)
    return (j // local) * batch_size + process_index * local + j % local


def padded_eval_indices(n: int, batch_size: int, process_index: int, process_count: int
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, mask) of this process's rows of every global evaluation batch over `n` items;
    past the end the index is 0 and the mask False, so every batch has the same shape."""
    local = local_batch_size(batch_size, process_count)
    for start in range(0, n, batch_size):
        idx = np.arange(start + process_index * local, start + (process_index + 1) * local)
        mask = idx < n
        yield np.where(mask, idx, 0), mask


def seeded_split(targets: np.ndarray, validation_fraction: float, test_fraction: float,
                 seed: int, stratify: bool) -> dict[str, np.ndarray]:
    """Indices of train / validation / test, fixed by `seed`, stratified by class if `stratify`
    (and the classes are large enough for it: else drawn at random); each split in the
    examples' original order. A fraction of 0 leaves that split out.

    The splits are those scikit-learn's `train_test_split(..., stratify=..., random_state=seed)`
    draws (test first, then validation from the rest; tests/test_data.py checks they are equal),
    made here without importing scikit-learn, whose import takes longer than a digits epoch.
    """
    for name, fraction in (("validation", validation_fraction), ("test", test_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"dataset.{name}_fraction={fraction} must be at least 0 and "
                             f"below 1")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(f"dataset.validation_fraction + dataset.test_fraction = "
                         f"{validation_fraction + test_fraction:g} leaves nothing to train on")
    if stratify:  # possible only with two of every class and room for each in every split
        classes, counts = np.unique(targets, return_counts=True)
        smallest = min(f for f in (validation_fraction, test_fraction) if f) if (
            validation_fraction or test_fraction) else 1
        stratify = counts.min() >= 2 and smallest * len(targets) >= len(classes)
    labels = targets if stratify else None
    rest, parts = np.arange(len(targets)), {}
    try:
        if test_fraction:
            kept, drawn = split_off(len(rest), test_fraction, labels, seed)
            rest, parts["test"] = rest[kept], rest[drawn]
        if validation_fraction:
            kept, drawn = split_off(len(rest), validation_fraction / (1 - test_fraction),
                                    None if labels is None else labels[rest], seed)
            rest, parts["validation"] = rest[kept], rest[drawn]
    except ValueError as e:  # too few examples of a class to stratify, or to split at all
        raise ValueError(f"cannot split {len(targets)} examples into validation "
                         f"{validation_fraction:g} and test {test_fraction:g} ({e}); use more "
                         f"data or other fractions") from None
    parts["train"] = rest
    return {name: np.sort(parts[name]) for name in ("train", "validation", "test")
            if name in parts}


def split_off(n: int, fraction: float, labels: np.ndarray | None, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(kept, drawn): positions 0..n-1 in two shuffled parts, `ceil(fraction * n)` drawn.
    With `labels`, each class is drawn in proportion (the leftover examples going to the
    classes with the largest fractional share, ties broken at random). One NumPy RandomState
    seeded with `seed` makes every draw, in the order scikit-learn's ShuffleSplit and
    StratifiedShuffleSplit make them, so the parts are theirs."""
    drawn_n = math.ceil(fraction * n)
    kept_n = n - drawn_n
    if kept_n <= 0:
        raise ValueError(f"drawing {drawn_n} of {n} leaves none")
    rng = np.random.RandomState(seed)
    if labels is None:
        order = rng.permutation(n)
        return order[drawn_n:], order[:drawn_n]
    classes, label_ids, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2 or min(kept_n, drawn_n) < len(classes):
        raise ValueError(f"{len(classes)} classes, the smallest with {counts.min()} examples, "
                         f"do not fit in parts of {kept_n} and {drawn_n}")
    members = np.split(np.argsort(label_ids, kind="stable"), np.cumsum(counts)[:-1])
    kept_per_class = _apportion(counts, kept_n, rng)
    drawn_per_class = _apportion(counts - kept_per_class, drawn_n, rng)
    kept, drawn = [], []
    for own, keep, draw in zip(members, kept_per_class, drawn_per_class):
        shuffled = own[rng.permutation(len(own))]
        kept.extend(shuffled[:keep])
        drawn.extend(shuffled[keep:keep + draw])
    return rng.permutation(kept), rng.permutation(drawn)


def _apportion(counts: np.ndarray, total: int, rng: np.random.RandomState) -> np.ndarray:
    """`total` shared among classes of `counts` in proportion: each its whole share, then one
    more for the largest leftover fractions, a tie drawn at random."""
    share = counts / counts.sum() * total
    whole = np.floor(share)
    missing = int(total - whole.sum())
    leftover = share - whole
    for value in np.unique(leftover)[::-1]:
        if missing <= 0:
            break
        (tied,) = np.where(leftover == value)
        chosen = rng.choice(tied, size=min(len(tied), missing), replace=False)
        whole[chosen] += 1
        missing -= len(chosen)
    return whole.astype(int)
