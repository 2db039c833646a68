"""The fuzz table's harness: every bad input is refused the same way.

A case runs `descent ...` in this process (no interpreter start, no compile: most cases are
refused before any work) and asserts what a user relies on: the exit code, exactly one line on
stderr that names the culprit, and that the work directory's checkpoints and a directory outside
it are byte-identical afterwards. The tables themselves live in tests/test_fuzz_*.py, one per
kind of input; each row is a `Case`.
"""
import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import stat
from collections.abc import Callable, Sequence

import pytest

from experiments.cli import main

from conftest import config_path

TINY = config_path("digits_mlp.py") + ":tiny"


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: `argv` (with `{workdir}`, `{outside}` and `{tmp}` filled in), what `plant` does
    to the directories first, the exit code, and the words the one stderr line must contain."""
    name: str
    argv: Sequence[str]
    names: Sequence[str] = ()
    code: int = 2
    plant: Callable[["Places"], None] | None = None

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class Places:
    """The directories of one case: a work directory (a copy of a trained one, or empty), a
    directory outside it that must stay untouched, and a scratch directory for input files."""
    workdir: str
    outside: str
    tmp: str

    def fill(self, argv: Sequence[str]) -> list[str]:
        return [a.format(workdir=self.workdir, outside=self.outside, tmp=self.tmp) for a in argv]


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def descent(argv: Sequence[str]) -> Result:
    """`descent argv` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse and absl exit on usage errors
            code = e.code if isinstance(e.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


def snapshot(root: str) -> dict[str, tuple]:
    """Every entry under `root` with its kind and content: a file's bytes' hash, a link's target,
    a directory's presence. Two equal snapshots mean nothing under `root` changed."""
    found = {}
    if not os.path.lexists(root):
        return found
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(parent, name)
            info = os.lstat(path)
            key = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                found[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[key] = ("dir",)
            else:
                with open(path, "rb") as f:
                    found[key] = ("file", hashlib.sha256(f.read()).hexdigest())
    return found


def make_places(tmp_path, trained: str | None) -> Places:
    """A case's directories under `tmp_path`; the work directory a copy of `trained` (links
    copied as links), or not yet made when `trained` is None."""
    outside = tmp_path / "outside"
    (outside / "tensorboard" / "train").mkdir(parents=True)
    (outside / "someone-elses.txt").write_text("not descent's\n")
    (outside / "tensorboard" / "train" / "events.out.tfevents.1.other").write_bytes(b"x" * 64)
    scratch = tmp_path / "files"
    scratch.mkdir()
    workdir = str(tmp_path / "work")
    if trained is not None:
        shutil.copytree(trained, workdir, symlinks=True)
    return Places(workdir, str(outside), str(scratch))


def check(case: Case, places: Places) -> Result:
    """Plants what the case plants, runs it, and asserts the refusal: the exit code, one stderr
    line naming `case.names`, the checkpoints and the outside directory as they were."""
    if case.plant is not None:
        case.plant(places)
    checkpoints = os.path.join(places.workdir, "checkpoints")
    before = snapshot(checkpoints), snapshot(places.outside)
    result = descent(places.fill(case.argv))
    assert result.code == case.code, (result.code, result.err[-2000:])
    if case.code != 0:
        assert len(result.lines) == 1, result.err[-2000:]
        line = result.lines[0]
        assert "Traceback" not in result.err
        for word in places.fill(case.names):
            assert word in line, (word, line)
    assert (snapshot(checkpoints), snapshot(places.outside)) == before, \
        "the work directory's checkpoints or a directory outside it changed"
    return result


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> str:
    """A work directory trained once by `descent train` on the tiny MLP config, for the cases
    that need checkpoints: each case works on its own copy."""
    workdir = str(tmp_path_factory.mktemp("fuzz") / "trained")
    result = descent(["train", "--config", TINY, "--workdir", workdir])
    assert result.code == 0, result.err[-2000:]
    return workdir
