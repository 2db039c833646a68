"""Every test runs on 8 fake CPU devices, so every sharded code path runs (docs/design.md, 10)."""
import atexit
import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gs:// through gcsfs, which the GCS emulator of tests/test_buckets.py can stand behind, not
# TensorFlow's file system (installed for the tfds tests), which knows no emulator. etils decides
# once per process, at its first path, so before any test runs.
os.environ["EPATH_USE_TF"] = "false"
# Compiling is half of the suite's time on 2 cores, and the tests' nets are small: at XLA's
# backend optimisation level 1 the suite takes about a fifth less time than at the default 2.
# Level 0 is faster still but computed wrong convolutions with JAX 0.10.2 (im2col against XLA
# 0.36 apart, tests/test_conv.py), so not that. The tests compare runs with each other and with
# thresholds; the README's quoted outputs come out the same at level 1.
FAST_COMPILE = "--xla_backend_optimization_level=1"


def xla_flags(devices: int = 1) -> str:
    """XLA_FLAGS for a process with `devices` CPU devices (1: as on a user's machine)."""
    count = f" --xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    return FAST_COMPILE + count


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
# JAX's persistent compilation cache (on by default, in ~/.cache/descent/jax) in the checkout's
# build/ folder instead: the tests' processes share their compiled programs there, and write
# nothing into the user's home. A folder JAX is given wins over the config's.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "jax-cache"))

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import logging  # noqa: E402

logging.set_verbosity(logging.ERROR)

# Many tests compile the same small programs again (a new Trainer is a new jitted function, the
# same HLO). XLA's persistent compilation cache, in a folder of this test process's own, turns
# those compiles into reads of the executable compiled first (the same program, so the same
# numbers): about a sixth less time for tests/test_train.py and tests/test_many.py on 2 cores.
# It is not shared with the commands the tests start as processes: JAX writes its entries in
# place, so a process killed by a test could leave a torn one for the next to read.
_XLA_CACHE = tempfile.mkdtemp(prefix="descent-tests-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    assert jax.device_count() == 8, "tests expect 8 fake CPU devices"


def config_path(name: str) -> str:
    return os.path.join(CONFIGS, name)


SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Real MNIST and Tiny Shakespeare, prepared offline by `descent data prepare`, run as a
    user runs it: in a process of its own, so TensorFlow stays out of the training process
    (one process for both: importing TensorFlow is most of preparing Tiny Shakespeare).
    Prepared once per test run: the run's test processes share it, the first to need it
    prepares it while the others wait on a lock; pytest removes it with the run's other
    temporary folders."""
    if not os.path.isdir(SHARED):
        pytest.skip(f"real datasets not found at {SHARED}: this machine has no ../shared/data")
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("preparing datasets needs TensorFlow: pip install -e '.[tf]'")
    run_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_dir = run_dir.parent  # this run's folder, above each test process's own
    data_dir, done = run_dir / "prepared-tfds", run_dir / "prepared-tfds.done"
    with open(run_dir / "prepared-tfds.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(data_dir, ignore_errors=True)  # a process that failed preparing it
            _prepare(str(data_dir))
            done.touch()
    return str(data_dir)


def _prepare(data_dir: str) -> None:
    commands = [["data", "prepare", name, "--manual-dir", os.path.join(SHARED, name),
                 "--data-dir", data_dir] for name in ("mnist", "tiny_shakespeare")]
    script = ("import sys\nfrom experiments.cli import main\n"
              f"sys.exit(max(main(argv) for argv in {commands!r}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("prepared ") == 2, result.stdout
    # the shared MNIST files are re-compressed: checked by their content instead
    assert ("t10k-labels-idx1-ubyte.gz differs from the archive tfds registered (another "
            "compression of it), but its decompressed content matches") in result.stderr


# The files that take longest, started first: the two test processes take whole files, and a
# long one started last leaves the other process idle at the end (the README's commands alone
# take two minutes). Longest first is how a fixed set of jobs finishes soonest on two workers.
LONGEST_FIRST = ("test_readme.py", "test_parallel.py", "test_group_kill.py", "test_zoo.py",
                 "test_checkpoints.py", "test_cli.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests, and the other files, keep their order
