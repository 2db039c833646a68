"""Input pipelines: datasets by name, yielding dicts of host numpy arrays per process.

Imports no model or training code; the training loop only needs `train_batches`,
`eval_batches` and `steps_per_epoch` of what `load` returns.
"""
from data.arrays import ArrayDataset, Batch
from data.digits import digits

DATASETS = {"digits": digits}


def load(name: str, **options) -> ArrayDataset:
    """Loads the dataset called `name`; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**options)


__all__ = ["ArrayDataset", "Batch", "DATASETS", "load"]
