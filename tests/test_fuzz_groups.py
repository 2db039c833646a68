"""The fuzz table's rows for groups of runs (`descent train --seeds ... --sweep ...`): seeds
and sweeps written wrong, options a group does not take, groups larger than the machine or the
step counter can hold, and run directories a group cannot resume or must not write through.
Each is refused in one line naming the culprit, before any training, with the checkpoints
and the files outside the work directory as they were."""
import dataclasses
import os
import shutil

import pytest

from fuzz import TINY, Case, check, make_places, snapshot, trained_workdir  # noqa: F401


def train(name, *args, names=(), plant=None):
    return Case(name, ["train", "--config", TINY, "--workdir", "{workdir}", *args], names,
                plant=plant)


def seeds(text, said):
    return train(f"--seeds {text!r}", f"--seeds={text}", names=[f"--seeds {text!r}", said])


def sweep(text, said):
    return train(f"--sweep {text!r}", f"--sweep={text}", names=[said])


SEEDS_ROWS = [
    seeds("0.5", "'0.5' is not a seed or a range of seeds"),
    seeds("1e3", "'1e3' is not a seed"),
    seeds("0x10", "'0x10' is not a seed"),
    seeds("0-", "'0-' is not a seed"),
    seeds("-", "'-' is not a seed"),
    seeds("-3-2", "'-3-2' is not a seed"),
    seeds("0,,1", "'' is not a seed"),
    seeds("0,1,", "'' is not a seed"),
    seeds("0-2-4", "'0-2-4' is not a seed"),
    seeds("2-2,0-3", "names seed 2 more than once"),
    seeds("\u0663", "is not a seed"),  # an Arabic-Indic three, which int() reads
    seeds("1_0", "'1_0' is not a seed"),
    seeds("0\u20132", "is not a seed"),  # an en dash, as text editors and web pages write one
    seeds("0..2", "'0..2' is not a seed"),
]

SWEEP_ROWS = [
    sweep("optimizer.learning_rate", "sweep optimizer.learning_rate, e.g."),
    sweep("=0.1,0.2", "sweep optimizer.learning_rate, e.g."),
    sweep("config.model.width=8,16", "sweep optimizer.learning_rate, e.g."),
    sweep("seed=1,2", "sweep optimizer.learning_rate, e.g."),
    sweep("optimizer.learning_rate=0.1;0.2", "the values are not numbers"),
    sweep("optimizer.learning_rate=0.1,,0.2", "the values are not numbers"),
    sweep("optimizer.learning_rate=1e999", "finite numbers above 0"),
    sweep("optimizer.learning_rate=[0.1,0.2]", "the values are not numbers"),
    sweep("optimizer.learning_rate=1e-3 3e-3", "the values are not numbers"),
    sweep("optimizer.learning_rate=0.1,0.10", "each once"),
]

OPTION_ROWS = [
    train("--sweep twice", "--sweep=optimizer.learning_rate=0.1", "--sweep",
          "optimizer.learning_rate=0.2", names=["--sweep is given twice"]),
    train("--seeds with --allow-config-change", "--seeds=0-1", "--allow-config-change",
          names=["--allow-config-change applies to single runs"]),
    train("--seeds with profile.start_step", "--seeds=0-1", "--config.profile.start_step=2",
          names=["profile.start_step applies to single runs"]),
    Case("eval --seeds", ["eval", "--workdir", "{workdir}", "--seeds", "0-1"], ["--seeds"]),
    Case("predict --sweep", ["predict", "--workdir", "{workdir}", "x.csv", "--sweep",
                             "optimizer.learning_rate=0.1"], ["--sweep"]),
]

# 8 learning rates for each of 65,536 seeds, or 200,000 learning rates: terabytes of runs
MANY_RATES = ",".join(f"{i + 1}e-7" for i in range(200_000))
SIZE_ROWS = [
    train("--seeds x --sweep past the memory", "--seeds=0-65535",
          "--sweep=optimizer.learning_rate=" + ",".join(f"0.0{i}" for i in range(1, 9)),
          names=["a group of 524,288 runs needs about", "GiB is available", "fewer --seeds"]),
    train("--sweep past the memory", "--sweep=optimizer.learning_rate=" + MANY_RATES,
          names=["a group of 200,000 runs needs about", "GiB is available"]),
    train("--seeds past the step counter", "--seeds=0-1", "--config.epochs=100000000",
          names=["3,900,000,000 steps", "32-bit step counter", "--config.epochs"]),
    train("a run alone past the step counter", "--config.epochs=60000000",
          names=["2,340,000,000 steps", "32-bit step counter"]),
]


def _run_dir_is_a_link(places):
    os.makedirs(places.workdir)
    os.symlink(places.outside, os.path.join(places.workdir, "seed_1"))


def _run_dir_is_a_file(places):
    os.makedirs(places.workdir)
    with open(os.path.join(places.workdir, "seed_1"), "w") as f:
        f.write("not a directory\n")


def _a_run_alone_beside(places):
    """The trained run alone moved into the group's first run directory."""
    inner = os.path.join(places.workdir, "seed_0")
    shutil.copytree(places.workdir, inner + ".tmp", symlinks=True)
    for name in os.listdir(places.workdir):
        if name != "seed_0.tmp":
            path = os.path.join(places.workdir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.rename(inner + ".tmp", inner)


def _no_step_in_common(places):
    """The trained run copied into both run directories, each missing another checkpoint."""
    steps = sorted(int(n) for n in os.listdir(os.path.join(places.workdir, "checkpoints"))
                   if n.isdigit())
    _a_run_alone_beside(places)
    first, second = (os.path.join(places.workdir, n) for n in ("seed_0", "seed_1"))
    shutil.copytree(first, second, symlinks=True)
    shutil.rmtree(os.path.join(first, "checkpoints", str(steps[-1])))
    for step in steps[:-1]:
        shutil.rmtree(os.path.join(second, "checkpoints", str(step)))


RUN_DIR_ROWS = [
    train("a run directory links outside", "--seeds=0-1", plant=_run_dir_is_a_link,
          names=["seed_1"]),
    train("a run directory is a file", "--seeds=0-1", plant=_run_dir_is_a_file,
          names=["seed_1"]),
]
# on a trained work directory: checkpoints a group did not save are kept and named
TRAINED_ROWS = [
    train("a run alone's checkpoints in a group's run directory", "--seeds=0-1",
          plant=_a_run_alone_beside, names=["seed_0", "not saved by this group of 2 runs"]),
    train("run directories with no checkpoint step in common", "--seeds=0-1",
          plant=_no_step_in_common, names=["no checkpoint at a step common to all", "seed_0: ",
                                           "seed_1: "]),
]

ROWS = SEEDS_ROWS + SWEEP_ROWS + OPTION_ROWS + SIZE_ROWS + RUN_DIR_ROWS


@pytest.mark.parametrize("case", ROWS, ids=str)
def test_bad_group_input_is_refused_up_front(case, tmp_path):
    check(case, make_places(tmp_path, None))


@pytest.mark.parametrize("case", TRAINED_ROWS, ids=str)
def test_a_group_on_a_trained_workdir_keeps_its_checkpoints(case, tmp_path, trained_workdir):
    places = make_places(tmp_path, trained_workdir)
    case.plant(places)
    runs = {name: os.path.join(places.workdir, name, "checkpoints") for name in ("seed_0",
                                                                                 "seed_1")}
    before = {name: snapshot(path) for name, path in runs.items()}
    check(dataclasses.replace(case, plant=None), places)
    assert {name: snapshot(path) for name, path in runs.items()} == before
    assert before["seed_0"], "the run directories hold no checkpoints: nothing was tested"
