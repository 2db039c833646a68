"""Nothing escapes the work directory: a link planted in it, or a name orbax cannot take, is
refused before any work, and what descent deletes or draws there is its own."""
import os
import shutil

import numpy as np
import pytest

from fuzz import TINY, descent, snapshot, trained_workdir  # noqa: F401
from train import report, writers


@pytest.fixture
def places(tmp_path, trained_workdir):
    """A copy of a trained work directory, and another program's TensorBoard folder beside it."""
    workdir = tmp_path / "work"
    shutil.copytree(trained_workdir, workdir, symlinks=True)
    theirs = tmp_path / "their-logs" / "train"
    theirs.mkdir(parents=True)
    (theirs / "events.out.tfevents.1700000000.otherhost").write_bytes(b"their curves")
    return workdir, theirs


@pytest.mark.parametrize("link", ["tensorboard", "tensorboard/train"])
def test_a_tensorboard_link_leads_nowhere_and_deletes_nothing(places, link):
    workdir, theirs = places
    shutil.rmtree(workdir / link)
    os.symlink(theirs if link.endswith("train") else theirs.parent, workdir / link)
    before = snapshot(str(theirs.parent))
    result = descent(["train", "--config", TINY, "--workdir", str(workdir),
                      "--config.epochs=3"])
    assert result.code == 2, result.err[-2000:]
    assert f"{workdir / link} is a symbolic link" in result.err
    assert snapshot(str(theirs.parent)) == before


def test_a_damaged_checkpoint_is_not_moved_through_a_link(places, tmp_path):
    workdir, _ = places
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, workdir / "checkpoints-damaged")
    (workdir / "checkpoints" / "78" / "_CHECKPOINT_METADATA").write_text("{not json")
    result = descent(["eval", "--workdir", str(workdir)])
    assert result.code == 2, result.err[-2000:]
    assert f"{workdir / 'checkpoints-damaged'} is a symbolic link" in result.err
    assert os.listdir(elsewhere) == []
    assert os.path.isdir(workdir / "checkpoints" / "78")


@pytest.mark.parametrize("name", [".descent.lock", "history.jsonl", "metrics.jsonl"])
def test_a_hard_link_at_a_file_descent_writes_in_place_is_refused(places, tmp_path, name):
    workdir, _ = places
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("their own text\n")
    (workdir / name).unlink(missing_ok=True)
    os.link(theirs, workdir / name)
    result = descent(["train", "--config", TINY, "--workdir", str(workdir),
                      "--config.optimizer.learning_rate=0.05", "--allow-config-change"])
    assert result.code == 2, result.err[-2000:]
    assert f"{workdir / name} is a hard link" in result.err
    assert theirs.read_text() == "their own text\n"


def test_a_backslash_in_the_workdir_is_refused_before_anything_is_made(tmp_path):
    # tensorstore reads the backslash as a folder separator: the arrays went to runs/a/b
    workdir = tmp_path / "runs" / "a\\b"
    result = descent(["train", "--config", TINY, "--workdir", str(workdir)])
    assert result.code == 2, result.err[-2000:]
    assert "contains '\\\\'" in result.err and "--workdir" in result.err
    assert os.listdir(tmp_path) == []


def test_a_workdir_that_is_a_link_is_where_descent_works(places, tmp_path):
    workdir, _ = places  # runs -> /big/disk/runs: the user's own link, not one planted inside
    os.symlink(workdir, tmp_path / "runs")
    result = descent(["eval", "--workdir", str(tmp_path / "runs")])
    assert result.code == 0, result.err[-2000:]
    assert (workdir / "eval_test_78.json").is_file()


def test_a_resumed_tensorboard_writer_removes_only_its_own_event_files(tmp_path):
    train = tmp_path / "tensorboard" / "train"
    train.mkdir(parents=True)
    theirs = train / "events.out.tfevents.1700000000.otherhost"
    theirs.write_bytes(b"their curves")
    earlier = train / "events.out.tfevents.1600000000.somehost.4242.descent"  # an earlier run's
    earlier.write_bytes(b"")
    resumed = writers.TensorBoard(str(tmp_path), "validation", [{"step": 1, "train_loss": 0.5}])
    resumed.close()
    assert theirs.read_bytes() == b"their curves"
    assert not earlier.exists()  # its records were written again, into a new file
    assert len(os.listdir(train)) == 2


def test_curves_of_a_workdir_named_like_a_formula_are_drawn(tmp_path):
    workdir = tmp_path / "$x^$"
    workdir.mkdir()
    report.append_line(str(workdir / report.METRICS_FILE),
                       {"step": 1, "train_loss": 0.5, "train_accuracy": 0.5})
    report.append_line(str(workdir / report.METRICS_FILE),
                       {"step": 2, "train_loss": 0.25, "eval_loss": 0.3, "eval_accuracy": 0.6})
    path = report.plot_curves(str(workdir), eval_label="$val^$")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_metrics_of_random_bytes_name_the_file_and_the_line(tmp_path):
    path = tmp_path / report.METRICS_FILE
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(b'{"step": 1}\n' + noise.replace(b"\n", b"") + b"\n")
    with pytest.raises(ValueError, match=f"{path} line 2 is not JSON"):
        report.read_metrics(str(tmp_path))
