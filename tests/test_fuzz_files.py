"""The fuzz table's rows for the user's own files: every format descent reads (CSV, .npz, image
folders, and what `predict` reads: .npy, CSV, images) crossed with the ways such a file is
damaged or implausible. Each is refused with one line that names the file (and the row, column
or key), before a work directory is made; nothing ever suggests unpickling (`allow_pickle`),
and text from the file is printed escaped."""
import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from fuzz import TINY, Case, check, make_places, trained_workdir  # noqa: F401

from conftest import config_path

ESCAPE = "\x1b[2J"  # a terminal's "clear the screen": printed raw, it would act


def _csv(name: str, text: str | bytes):
    def plant(places):
        data = text if isinstance(text, bytes) else text.encode()
        with open(os.path.join(places.tmp, name), "wb") as f:
            f.write(data)
    return plant


def _npz(name: str = "d.npz", **arrays):
    def plant(places):
        np.savez(os.path.join(places.tmp, name), **arrays)
    return plant


def _bytes(name: str, make):
    def plant(places):
        with open(os.path.join(places.tmp, name), "wb") as f:
            f.write(make())
    return plant


def _half_of_an_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.zeros((40, 4), np.float32), y_train=np.arange(40) % 2)
    return buffer.getvalue()[:300]


def _pickled_member() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.array([{"a": 1}, {"b": 2}], dtype=object),
             y_train=np.array([0, 1]))
    return buffer.getvalue()


def _garbage_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x_train.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x'}  \n")
    return buffer.getvalue()


def _empty_zip() -> bytes:
    buffer = io.BytesIO()
    zipfile.ZipFile(buffer, "w").close()
    return buffer.getvalue()


def _images(layout: dict[str, list[tuple[int, int]]], garbage: str = ""):
    """Folders of PNGs under {tmp}/imgs: `layout` maps a relative folder to image sizes."""
    def plant(places):
        for folder, sizes in layout.items():
            path = os.path.join(places.tmp, "imgs", folder)
            os.makedirs(path, exist_ok=True)
            for i, (w, h) in enumerate(sizes):
                Image.new("L", (w, h), color=i * 40).save(os.path.join(path, f"{i}.png"))
        if garbage:
            with open(os.path.join(places.tmp, "imgs", garbage), "wb") as f:
                f.write(b"not an image at all")
    return plant


def _npy(name: str, array=None, raw: bytes | None = None):
    def plant(places):
        path = os.path.join(places.tmp, name)
        if raw is not None:
            with open(path, "wb") as f:
                f.write(raw)
        else:
            np.save(path, array, allow_pickle=array.dtype == object)
    return plant


def train(name, dataset, path, names, plant, *more):
    return Case(name, ["train", "--config", TINY, "--workdir", "{workdir}",
                       f"--config.dataset.name={dataset}", f"--config.dataset.path={path}",
                       *more], names, plant=plant)


def csv_case(name, text, names, *more):
    return train(f"csv {name}", "csv", "{tmp}/t.csv", ["{tmp}/t.csv", *names],
                 _csv("t.csv", text), *more)


def npz_case(name, plant, names, *more):
    return train(f"npz {name}", "arrays", "{tmp}/d.npz", ["{tmp}/d.npz", *names], plant, *more)


def folder_case(name, plant, names, *more):
    return train(f"image folder {name}", "image_folder", "{tmp}/imgs", names, plant, *more)


X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
Y = np.arange(40) % 2
GOOD_CSV = "a,b,y\n" + "".join(f"{i},{-i},{i % 2}\n" for i in range(20))

TRAIN_ROWS = [
    csv_case("one class", "a,y\n" + "1,cat\n2,cat\n3,cat\n", ["'y' holds one class ('cat')"]),
    csv_case("NA target", "a,y\n1,cat\n2,NA\n3,dog\n", ["line 3", "'NA', a missing value"]),
    csv_case("nan target", "a,y\n1,0.5\n2,nan\n3,0.7\n", ["line 3", "'nan', a missing value"]),
    csv_case("inf target", "a,y\n1,0.5\n2,0.1\n3,-inf\n", ["line 4", "'-inf'"]),
    csv_case("empty target", "a,y\n1,cat\n2,\n3,dog\n", ["line 3", "'y' is empty"]),
    csv_case("duplicate columns", "a,a,y\n1,2,0\n3,4,1\n", ["'a' more than once"]),
    csv_case("nan feature", "a,b,y\n1,2,0\nnan,4,1\n", ["line 3, column 'a'", "finite"]),
    csv_case("inf feature", "a,b,y\n1,2,0\n3,inf,1\n", ["line 3, column 'b'", "finite"]),
    csv_case("feature past float32", "a,y\n1,0\n1e39,1\n", ["line 3, column 'a'", "float32"]),
    csv_case("target past float32", "a,y\n1,0.5\n2,1e39\n", ["line 3", "'y' is 1e39"]),
    csv_case("text feature", "a,y\n1,0\nlots,1\n", ["line 3, column 'a'", "not a number"]),
    csv_case("ragged row", "a,b,y\n1,2,0\n3,1\n", ["line 3 has 2 fields", "header has 3"]),
    csv_case("header only", "a,b,y\n", ["a header row and at least one row"]),
    csv_case("empty file", "", ["a header row and at least one row"]),
    csv_case("not UTF-8", b"a,y\n1,caf\xe9\n2,th\xe9\n", ["not a readable CSV file"]),
    csv_case("random bytes", bytes(range(256)) * 4, ["not a readable CSV file"]),
    csv_case("unknown target", GOOD_CSV, ["dataset.target='z' is not a column", "a, b, y"],
             "--config.dataset.target=z"),
    csv_case("target only", "y\n0\n1\n", ["only the target column 'y'"]),
    csv_case("escape in a column name", f"{ESCAPE},{ESCAPE},y\n1,2,0\n1,2,1\n",
             ["'\\x1b[2J' more than once"]),
    train("csv a folder", "csv", "{tmp}", ["not a readable CSV file"], None),
    train("csv missing", "csv", "{tmp}/none.csv", ["'{tmp}/none.csv' does not exist"], None),
    npz_case("x_train without y_train", _npz(x_train=X), ["x_train has no y_train"]),
    npz_case("y_train without x_train", _npz(y_train=Y), ["y_train has no x_train"]),
    npz_case("not a zip", _csv("d.npz", GOOD_CSV), ["is not an .npz archive", "numpy.savez"]),
    npz_case("a CSV renamed", _csv("d.npz", "x,y\n1,2\n"), ["is not an .npz archive"]),
    npz_case("a member that is not an array", _bytes("d.npz", _garbage_member),
             ["'x_train' is not a readable array"]),
    npz_case("empty archive", _bytes("d.npz", _empty_zip), ["there are no arrays"]),
    npz_case("truncated", _bytes("d.npz", _half_of_an_npz), ["is not an .npz archive"]),
    npz_case("pickled member", _bytes("d.npz", _pickled_member),
             ["'x_train' holds Python objects", "reads no pickled data"]),
    npz_case("label 200000 among zeros", _npz(x_train=X, y_train=np.where(
        np.arange(40) == 7, 200_000, 0)), ["go up to 200000 but only 2 of those 200,001 ids"]),
    npz_case("one class", _npz(x_train=X, y_train=np.zeros(40, int)), ["hold 1 class"]),
    npz_case("negative label", _npz(x_train=X, y_train=Y - 1), ["must be >= 0 (got -1)"]),
    npz_case("rows differ", _npz(x_train=X, y_train=Y[:30]),
             ["x_train has 40 rows but y_train 30 rows"]),
    npz_case("nan input", _npz(x_train=np.where(X > 2, np.nan, X), y_train=Y),
             ["x_train[", "is nan", "finite"]),
    npz_case("float64 input past float32", _npz(x_train=np.where(X > 2, 1e300, X.astype(
        np.float64)), y_train=Y), ["an input is 1e+300, past the largest float32"]),
    npz_case("inf regression target", _npz(x_train=X, y_train=np.where(
        Y > 0, np.inf, 0.5)), ["y_train[1] is inf"]),
    npz_case("test rows of another shape", _npz(x_train=X, y_train=Y, x_test=X[:, :3],
                                                y_test=Y), ["x_test holds rows of shape (3,)"]),
    npz_case("no rows", _npz(x_train=X[:0], y_train=Y[:0]), ["have no rows"]),
    npz_case("two labels per row", _npz(x_train=X, y_train=np.stack([Y, Y], 1)),
             ["targets of shape (2,) per row"]),
    npz_case("text inputs", _npz(x_train=np.array(["a"] * 40), y_train=Y),
             ["are neither pixels nor numbers"]),
    npz_case("integer inputs past 255", _npz(x_train=(X * 1000).astype(int), y_train=Y),
             ["integer inputs must be pixels in 0..255"]),
    npz_case("too few class names", _npz(x_train=X, y_train=Y, class_names=np.array(["a"])),
             ["class_names has 1 names but the targets go up to class 1"]),
    train("npz a folder", "arrays", "{tmp}", ["{tmp} is not an .npz archive"], None),
    folder_case("one class", _images({"cat": [(8, 8)] * 3}), ["holds 1 class folder(s)"]),
    folder_case("class without images", _images({"cat": [(8, 8)] * 3, "dog": []}),
                ["imgs/dog holds no images"]),
    folder_case("an image that is not one", _images({"cat": [(8, 8)] * 3, "dog": [(8, 8)]},
                                                    garbage="dog/broken.png"),
                ["dog/broken.png cannot be read as an image"]),
    folder_case("sizes differ", _images({"cat": [(8, 8)] * 3, "dog": [(9, 8)]}),
                ["have different sizes", "image_size=N"]),
    folder_case("splits beside classes", _images({"train/cat": [(8, 8)], "train/dog": [(8, 8)],
                                                  "cat": [(8, 8)]}),
                ["holds split folders (train) and other folders (cat)"]),
    folder_case("splits without train", _images({"test/cat": [(8, 8)], "test/dog": [(8, 8)],
                                                 "validation/cat": [(8, 8)]}),
                ["has validation/, test/ folders of classes but no train/ folder"]),
    folder_case("escape in a class name", _images({ESCAPE: [(8, 8)] * 2, "dog": []}),
                ["imgs/dog holds no images"]),
    folder_case("escape in the only class", _images({f"a{ESCAPE}": []}),
                ["holds 1 class folder(s)"]),
]


def predict(name, plant, names, *paths):
    return Case(f"predict {name}", ["predict", "--workdir", "{workdir}", *paths], names,
                plant=plant)


# A run on the bundled digits (float 8x8x1 inputs): .npy and image files.
DIGITS_ROWS = [
    predict("npy of another shape", _npy("r.npy", np.zeros((3, 64), np.float32)),
            ["{tmp}/r.npy", "shape (3, 64)", "rows of shape (8, 8, 1)"], "{tmp}/r.npy"),
    predict("npy of objects", _npy("r.npy", np.array([{}, {}], dtype=object)),
            ["{tmp}/r.npy holds Python objects"], "{tmp}/r.npy"),
    predict("npy that is text", _npy("r.npy", raw=b"1,2,3\n"),
            ["{tmp}/r.npy is not a readable .npy array"], "{tmp}/r.npy"),
    predict("npy truncated", _npy("r.npy", raw=b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'"),
            ["{tmp}/r.npy is not a readable .npy array"], "{tmp}/r.npy"),
    predict("npy with nan", _npy("r.npy", np.full((2, 8, 8, 1), np.nan, np.float32)),
            ["{tmp}/r.npy[0, 0, 0, 0] is nan"], "{tmp}/r.npy"),
    predict("npy without rows", _npy("r.npy", np.zeros((0, 8, 8, 1), np.float32)),
            ["{tmp}/r.npy holds no rows (shape (0, 8, 8, 1))"], "{tmp}/r.npy"),
    predict("npy of text", _npy("r.npy", np.full((2, 8, 8, 1), "x")),
            ["{tmp}/r.npy holds <U1 values, not numbers"], "{tmp}/r.npy"),
    predict("npz named npy", _bytes("r.npy", _half_of_an_npz),
            ["{tmp}/r.npy is not a readable .npy array"], "{tmp}/r.npy"),
    predict("npy missing", None, ["{tmp}/gone.npy is not a file"], "{tmp}/gone.npy"),
    predict("image that is not one", _csv("x.png", "hello"),
            ["{tmp}/x.png cannot be read as an image"], "{tmp}/x.png"),
]

# A run on a CSV table (columns a, b; target y): CSV files.
CSV_RUN_ROWS = [
    predict("csv without a column", _csv("p.csv", "a,y\n1,0\n"),
            ["{tmp}/p.csv lacks the column(s) b"], "{tmp}/p.csv"),
    predict("csv with nan", _csv("p.csv", "a,b\n1,2\nnan,3\n"),
            ["{tmp}/p.csv line 3, column 'a'", "finite"], "{tmp}/p.csv"),
    predict("csv with a column twice", _csv("p.csv", "a,b,a\n5,-5,5\n"),
            ["{tmp}/p.csv", "'a' more than once"], "{tmp}/p.csv"),
    predict("csv ragged", _csv("p.csv", "a,b\n1,2\n3\n"), ["{tmp}/p.csv line 3"],
            "{tmp}/p.csv"),
    predict("csv empty", _csv("p.csv", ""), ["{tmp}/p.csv needs a header row"], "{tmp}/p.csv"),
]

ROWS = TRAIN_ROWS + DIGITS_ROWS + CSV_RUN_ROWS


@pytest.fixture(scope="module")
def csv_workdir(tmp_path_factory, trained_workdir) -> str:  # noqa: F811 - a fixture
    """A work directory the tiny MLP trained in on a two-column table."""
    from fuzz import descent

    root = tmp_path_factory.mktemp("csv_run")
    table = root / "table.csv"
    rows = np.random.default_rng(1).normal(size=(120, 2))
    table.write_text("a,b,y\n" + "".join(f"{a:.4f},{b:.4f},{int(a + b > 0)}\n"
                                         for a, b in rows))
    workdir = str(root / "run")
    result = descent(["train", "--config", config_path("digits_mlp.py") + ":tiny", "--workdir",
                      workdir, "--config.dataset.name=csv", f"--config.dataset.path={table}"])
    assert result.code == 0, result.err[-2000:]
    return workdir


@pytest.mark.parametrize("case", ROWS, ids=str)
def test_a_bad_file_is_refused_in_one_line_naming_it(case, tmp_path, request):
    trained = {"train": None, "predict": None}[case.argv[0]]
    if case in DIGITS_ROWS:
        trained = request.getfixturevalue("trained_workdir")
    elif case in CSV_RUN_ROWS:
        trained = request.getfixturevalue("csv_workdir")
    places = make_places(tmp_path, trained)
    result = check(case, places)
    assert "allow_pickle" not in result.err and "\x1b" not in result.err, result.err
    if trained is None:  # refused before anything was made
        assert not os.path.exists(places.workdir)
