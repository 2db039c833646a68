"""The article's claims on how networks learn, each turned into a study: real runs through the
toolkit's public API, several seeds, a written finding with its numbers, and figures.

    descent study list
    descent study activations [--quick] [--seeds N] [--out DIR]
    descent study all

From Python: `studies.run("activations", "runs/studies", quick=True)` returns the study's
results (also written to `<out>/<name>/results.json` beside `report.md` and the figures).
"""
import importlib
import time

from experiments.studies import common

# name -> module under experiments/studies/, in the order of the article (and of `study all`)
STUDIES = ("activations", "learning_rate", "optimizers", "batch_size", "overfitting",
           "backpropagation", "losses", "capacity", "features", "learned_vs_engineered",
           "recurrent", "scale")


def module(name: str):
    """The study called `name`; an unknown name lists the known ones."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(STUDIES)} (or all)")
    return importlib.import_module(f"experiments.studies.{name}")


def run(name: str, out: str = common.DEFAULT_OUT, *, quick: bool = False,
        seeds: int | None = None, data_dir: str | None = None, progress=print) -> dict:
    """Runs study `name` into `<out>/<name>/` and returns its results.

    `quick` shrinks it to seconds (what the tests run); `seeds` repeats each configuration with
    seeds 0..N-1 (default: the study's own, 3 or more); `data_dir` is where prepared tfds
    datasets are (studies on MNIST or Tiny Shakespeare need it, default ~/tensorflow_datasets).
    """
    study = common.Study(name, module(name), out, quick=quick, seeds=seeds, data_dir=data_dir,
                         progress=progress)
    return study.run()


def run_all(out: str = common.DEFAULT_OUT, *, quick: bool = False, seeds: int | None = None,
            data_dir: str | None = None, progress=print) -> dict:
    """Runs every study in turn, then writes `<out>/index.md`: each claim, its finding and its
    first figure. Returns {name: results}."""
    start = time.perf_counter()
    results = {name: run(name, out, quick=quick, seeds=seeds, data_dir=data_dir,
                         progress=progress) for name in STUDIES}
    common.write_index(out, results, time.perf_counter() - start)
    return results
