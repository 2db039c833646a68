"""Importing descent changes nothing global: a notebook keeps its plots, logging and JAX settings,
and no thread or thread pool is made until a run needs one."""
import subprocess
import sys

from conftest import ROOT

PROBE = r'''
import concurrent.futures, gc, logging, pkgutil, importlib, threading, warnings, json
import matplotlib
matplotlib.use("svg")  # what a notebook user chose, say
from absl import logging as absl_logging
import jax

def settings():
    absl = absl_logging.get_absl_logger()
    return {"backend": matplotlib.get_backend(), "absl": absl_logging.get_verbosity(),
            "absl_filters": len(absl.filters), "root": logging.getLogger().level,
            "root_handlers": len(logging.getLogger().handlers),
            "warnings": len(warnings.filters), "x64": jax.config.jax_enable_x64,
            "collectives": jax.config.jax_cpu_collectives_implementation,
            "pyplot": "matplotlib.pyplot" in __import__("sys").modules,
            "threads": threading.active_count(),
            "thread_pools": sum(isinstance(o, concurrent.futures.ThreadPoolExecutor)
                                for o in gc.get_objects()),
            "descent_handlers": sum(len(logging.getLogger(name).handlers)
                                    for name in ("train", "data", "nets", "experiments"))}

# what the libraries descent uses do when imported (orbax adds a root log handler, scipy
# warning filters) is theirs: imported first, it is part of the baseline
for library in ("flax", "optax", "orbax.checkpoint", "tensorflow_datasets", "grain", "sklearn",
                "tqdm", "ml_collections", "tensorboardX", "matplotlib.figure"):
    importlib.import_module(library)
before = settings()
imported = []
for package in ("nets", "data", "train", "experiments"):
    importlib.import_module(package)
    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if module.name != "experiments.__main__":
            importlib.import_module(module.name)
            imported.append(module.name)
# and drawing a run's curves, as every run does
import os, tempfile
from train import report
with tempfile.TemporaryDirectory() as d:
    report.write_atomically(os.path.join(d, "metrics.jsonl"),
                            '{"step": 1, "train_loss": 1.0}\n{"step": 2, "train_loss": 0.5}\n')
    report.plot_curves(d)
print(json.dumps({"before": before, "after": settings(), "imported": imported}))
'''


def test_importing_every_module_and_plotting_leaves_global_settings_alone():
    import json
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"train.loop", "train.report", "experiments.run", "experiments.cli",
            "experiments.studies.common"} <= set(result["imported"])
    assert result["after"] == result["before"]
