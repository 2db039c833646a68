"""The fuzz table's planted links: a symbolic link (to a file, to a folder, dangling) or a hard
link at every path descent touches in a trained work directory, on every command that works
there, and work directory names orbax cannot take. Each is refused before any work, naming the
culprit, with the checkpoints and the directory outside as they were (tests/fuzz.py)."""
import glob
import os
import shutil

import numpy as np
import pytest

from fuzz import TINY, Case, check, make_places, trained_workdir  # noqa: F401

# Files descent writes, appends to, reads or deletes in a trained work directory; `*` stands
# for the one name found there (a TensorBoard event file's name holds its time and host).
FILES = (".descent.lock", "metrics.jsonl", "history.jsonl", "eval_test_78.json", "curves.png",
         "tensorboard/train/events.out.tfevents.*", "checkpoints/78/_CHECKPOINT_METADATA",
         "checkpoints/78/state/_METADATA", "checkpoints/78/descent-checksums.json",
         "checkpoints/39/config/metadata")
# Folders descent makes, writes into, moves checkpoints into or removes.
FOLDERS = ("tensorboard", "tensorboard/train", "tensorboard/validation", "profile",
           "checkpoints", "checkpoints/78", "checkpoints/39/state", "checkpoints-damaged")

COMMANDS = {
    "train": ["train", "--config", TINY, "--workdir", "{workdir}"],
    "eval": ["eval", "--workdir", "{workdir}"],
    "predict": ["predict", "{tmp}/rows.npy", "--workdir", "{workdir}"],
    "sample": ["sample", "--workdir", "{workdir}", "--prompt", "ROMEO:"],
}


def _found(places, relative: str) -> str:
    path = os.path.join(places.workdir, relative)
    return sorted(glob.glob(path))[0] if "*" in relative else path


def _replace(path: str) -> None:
    """Removes what is at `path`, so that a link can take its place."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)


def symlink_to_file(relative: str):
    def plant(places):
        path = _found(places, relative)
        _replace(path)
        os.symlink(os.path.join(places.outside, "someone-elses.txt"), path)
    return plant


def symlink_to_folder(relative: str):
    def plant(places):
        path = _found(places, relative)
        _replace(path)
        os.symlink(os.path.join(places.outside, "tensorboard"), path)
    return plant


def dangling_symlink(relative: str):
    def plant(places):
        path = _found(places, relative)
        _replace(path)
        os.symlink(os.path.join(places.outside, "not-there"), path)
    return plant


def hard_link(relative: str):
    def plant(places):
        path = _found(places, relative)
        _replace(path)
        os.link(os.path.join(places.outside, "someone-elses.txt"), path)
    return plant


def _with_inputs(plant):
    """`plant`, and a file of rows for predict: its only fault is the link."""
    def both(places):
        np.save(os.path.join(places.tmp, "rows.npy"), np.zeros((2, 64), np.float32))
        plant(places)
    return both


def _culprit(relative: str) -> str:
    """The words the refusal must show: the link's path (an event file's name up to its time)."""
    return "{workdir}/" + relative.split("*")[0].rstrip(".")


def _link_rows(commands) -> list[Case]:
    rows = []
    kinds = [("symlink-to-file", symlink_to_file, FILES),
             ("dangling-symlink", dangling_symlink, FILES + FOLDERS),
             ("hard-link", hard_link, FILES),
             ("symlink-to-folder", symlink_to_folder, FOLDERS)]
    for command in commands:
        for kind, make, where in kinds:
            for relative in where:
                plant = make(relative)
                rows.append(Case(f"{command}-{kind}-{relative.replace('*', 'file')}",
                                 COMMANDS[command], names=(_culprit(relative),),
                                 plant=_with_inputs(plant) if command == "predict" else plant))
    return rows


# Names orbax's array store cannot take: refused before anything is made (the work directory
# is asked for inside the outside directory, which must stay as it was).
NAMES = {"backslash": ("run\\1", "'\\\\'"), "glob-class": ("run[1]", "'['"),
         "glob-star": ("run*", "'*'"), "glob-question-mark": ("run?", "'?'"),
         "not-utf-8": (os.fsdecode(b"run\xff"), "UTF-8")}


def _name_rows() -> list[Case]:
    rows = []
    for kind, (name, culprit) in NAMES.items():
        workdir = "{outside}/" + name
        rows.append(Case(f"train-name-{kind}", ["train", "--config", TINY, "--workdir", workdir],
                         names=(culprit, "--workdir")))
        rows.append(Case(f"eval-name-{kind}", ["eval", "--workdir", workdir],
                         names=(culprit, "--workdir")))
    return rows


CASES = (_link_rows(("train", "eval")) + _link_rows(("predict", "sample"))[::4] + _name_rows())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_planted_link_or_a_name_orbax_cannot_take_is_refused(case, tmp_path, trained_workdir):
    check(case, make_places(tmp_path, trained_workdir))
