"""Your own data: an .npz, a folder of PNGs and CSV tables the tests make themselves, trained from
the command line on a shipped config, evaluated and predicted from a fresh process."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_diabetes, load_digits, load_iris, load_wine

import data
from experiments import run
from experiments.cli import main
from experiments.config import load_config

from conftest import ROOT, config_path, xla_flags

MLP, CNN = config_path("digits_mlp.py") + ":tiny", config_path("digits_cnn.py") + ":tiny"
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real data written as a user's files: digits as a Keras-style .npz of uint8 images and as
    a folder of 16x16 PNGs per class; iris (species names) and diabetes (a float target) as
    CSV tables with a header."""
    root = tmp_path_factory.mktemp("own")
    digits = load_digits()
    x, y = (digits.images * 255 / 16).astype(np.uint8), digits.target
    np.savez(root / "digits.npz", x_train=x[:1400], y_train=y[:1400], x_test=x[1400:],
             y_test=y[1400:])
    for i in range(500):
        folder = root / "folder" / NAMES[y[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).resize((16, 16)).save(folder / f"{i}.png")
    (root / "sparse" / "cat").mkdir(parents=True)  # a class folder without images
    (root / "sparse" / "dog").mkdir()
    Image.fromarray(x[0]).save(root / "sparse" / "cat" / "0.png")
    iris = load_iris()
    write_csv(root / "iris.csv", [*iris.feature_names, "species"],
              [[*row, iris.target_names[t]] for row, t in zip(iris.data, iris.target)])
    diabetes = load_diabetes()
    write_csv(root / "diabetes.csv", [*diabetes.feature_names, "progression"],
              [[*row, t] for row, t in zip(diabetes.data, diabetes.target)])
    return root


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def fresh(*args):
    """`descent ARGS` in a process of its own, with one CPU device: nothing registered, nothing
    cached from the process that trained."""
    env = {**os.environ, "XLA_FLAGS": xla_flags()}
    result = subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=300)
    return result.returncode, result.stdout, result.stderr


def train(capsys, workdir, config, *overrides):
    assert main(["train", "--config", config, "--workdir", str(workdir), *overrides]) == 0
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("kind", ["npz", "png folder", "png folder read per example", "csv"])
def test_own_files_train_then_evaluate_from_a_fresh_process(files, tmp_path, capsys, kind):
    overrides = {
        "npz": ["--config.dataset.name=arrays", f"--config.dataset.path={files}/digits.npz"],
        "png folder": ["--config.dataset.name=image_folder",
                       f"--config.dataset.path={files}/folder", "--config.dataset.grayscale=True"],
        "png folder read per example": ["--config.dataset.name=image_folder",
                                        f"--config.dataset.path={files}/folder",
                                        "--config.dataset.grayscale=True",
                                        "--config.dataset.max_in_memory_mb=0"],
        "csv": ["--config.dataset.name=csv", f"--config.dataset.path={files}/iris.csv",
                "--config.dataset.target=species", "--config.epochs=10"],
    }[kind]
    lines = train(capsys, tmp_path, MLP, *overrides)
    described = next(line for line in lines if line.startswith("data: "))
    expected = {"npz": "10 classes (0, 1, 2, 3, 4, ...), inputs 8x8x1; 1,260 train, 140 "
                       "validation, 397 test; uint8 pixels scaled to [0, 1]",
                "png folder": "10 classes (eight, five, four, nine, one, ...), inputs 16x16x1; "
                              "350 train, 50 validation, 100 test; decoded as grey, 16x16",
                "csv": "3 classes (setosa, versicolor, virginica), inputs 4; 105 train, 15 "
                       "validation, 30 test; 4 feature columns standardised"}
    assert expected[kind.replace(" read per example", "")] in described
    code, out, err = fresh("eval", "--workdir", str(tmp_path))
    assert code == 0, err
    test_line = lines[-1].split("; ", 1)[1]  # 'test accuracy A (N examples), loss L'
    assert out.strip().split(": ", 1)[1] == test_line


def test_the_folder_read_per_example_trains_exactly_as_the_one_in_memory(files, tmp_path):
    config = load_config(MLP)
    config.dataset.name, config.dataset.path = "image_folder", str(files / "folder")
    config.dataset.grayscale = True
    in_memory = run.train_and_evaluate(config, str(tmp_path / "memory"), console=False)
    config.dataset.max_in_memory_mb = 0  # every folder is "too large": read through grain
    assert isinstance(run.load_dataset(config), data.FolderImages)
    streamed = run.train_and_evaluate(config, str(tmp_path / "grain"), console=False)
    for a, b in zip(jax_leaves(in_memory["state"].params), jax_leaves(streamed["state"].params)):
        np.testing.assert_array_equal(a, b)
    assert streamed["test"]["accuracy"] == in_memory["test"]["accuracy"]


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(jax.device_get(tree))


def test_a_regression_table_trains_with_mse_and_reports_mse_and_mae(files, tmp_path, capsys):
    lines = train(capsys, tmp_path, config_path("diabetes_mlp.py"), "--config.dataset.name=csv",
                  f"--config.dataset.path={files}/diabetes.csv", "--config.epochs=30")
    assert "regression of 1 value(s), inputs 10" in next(l for l in lines if l.startswith("data:"))
    last = lines[-1]
    assert last.startswith("best checkpoint: step ") and " test mse " in last and ", mae " in last
    mse = float(last.split(" test mse ")[1].split(",")[0])
    targets = load_diabetes().target
    assert mse < 0.8 * targets.var()  # learned something: below predicting the mean
    code, out, err = fresh("predict", "--workdir", str(tmp_path), str(files / "diabetes.csv"))
    assert code == 0, err
    rows = out.strip().splitlines()
    assert len(rows) == len(targets) and rows[0].startswith(f"{files}/diabetes.csv row 1: ")
    predicted = np.array([float(r.rsplit(": ", 1)[1]) for r in rows])
    assert np.mean(np.abs(predicted - targets)) < np.mean(np.abs(targets - targets.mean()))


def test_predicts_probabilities_equal_the_evaluations_on_the_same_examples(files, tmp_path,
                                                                           capsys):
    train(capsys, tmp_path, MLP, "--config.dataset.name=arrays",
          f"--config.dataset.path={files}/digits.npz")
    restored = run.restore(str(tmp_path), "best", mesh="data=1")
    test = restored.dataset.splits["test"]
    assert test["inputs"].dtype == np.uint8  # raw pixels, as the user's file holds them
    probabilities = run.predict(restored, test["inputs"])
    evaluated = run.evaluate(str(tmp_path), "best", "test")
    nll = -np.mean(np.log(probabilities[np.arange(len(test["targets"])), test["targets"]]))
    assert nll == pytest.approx(evaluated["loss"], rel=1e-4)
    assert np.mean(probabilities.argmax(1) == test["targets"]) == evaluated["accuracy"]


def test_descent_predict_prints_the_top_classes_of_image_files(files, tmp_path, capsys):
    shutil.copytree(files / "folder", tmp_path / "photos")
    train(capsys, tmp_path, CNN, "--config.dataset.name=image_folder",
          f"--config.dataset.path={tmp_path}/photos", "--config.dataset.grayscale=True",
          "--config.epochs=6")
    shutil.rmtree(tmp_path / "photos")  # predict needs only the checkpoint
    one, seven = str(files / "folder" / "one" / "1.png"), str(files / "folder" / "seven" / "7.png")
    code, out, err = fresh("predict", "--workdir", str(tmp_path), one, seven, "--top-k", "2")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [one, seven]
    for line, truth in zip(lines, ("one", "seven")):
        (first, p1), (second, p2) = (pair.rsplit(" ", 1) for pair in line.split(": ")[1].split(", "))
        assert first in NAMES and second in NAMES and first != second
        assert 1 >= float(p1) >= float(p2) > 0
    code, out, _ = fresh("predict", "--workdir", str(tmp_path), str(files / "folder" / "two"))
    assert code == 0 and len(out.strip().splitlines()) == len(os.listdir(files / "folder" / "two"))


def test_data_that_moved_or_changed_is_named_and_touches_no_checkpoint(files, tmp_path, capsys):
    table = tmp_path / "iris.csv"
    shutil.copy(files / "iris.csv", table)
    train(capsys, tmp_path / "run", MLP, "--config.dataset.name=csv",
          f"--config.dataset.path={table}")
    table.rename(tmp_path / "elsewhere.csv")
    code, _, err = fresh("eval", "--workdir", str(tmp_path / "run"))
    assert code == 2 and err.strip() == (
        f"descent: error: the data this run trained on is not where it was (dataset.path "
        f"'{table}' does not exist; point it at a CSV file with a header row); if it moved, "
        f"say where it is now with --data-path")
    assert main(["train", "--config", MLP, "--workdir", str(tmp_path / "run"),  # moved: resumes
                 "--config.dataset.name=csv", f"--config.dataset.path={tmp_path}/elsewhere.csv"]
                ) == 0
    capsys.readouterr()
    with open(tmp_path / "elsewhere.csv") as f:
        rows = f.read().splitlines()
    table.write_text("\n".join(rows[:-1]) + "\n")  # one example fewer
    code, _, err = fresh("eval", "--workdir", str(tmp_path / "run"))
    assert code == 2 and "the data of this run changed since it trained" in err
    assert main(["train", "--config", MLP, "--workdir", str(tmp_path / "run"),
                 "--config.dataset.name=csv", f"--config.dataset.path={table}",
                 "--config.epochs=3"]) == 2
    assert "was trained on other data than the table" in capsys.readouterr().err


def test_a_run_predicts_without_its_data_and_finds_moved_data_from_any_directory(
        files, tmp_path, capsys, monkeypatch):
    (tmp_path / "tables").mkdir()
    shutil.copy(files / "iris.csv", tmp_path / "tables" / "iris.csv")
    monkeypatch.chdir(tmp_path)  # the data given relative to where the user stands
    train(capsys, "run", MLP, "--config.dataset.name=csv",
          "--config.dataset.path=tables/iris.csv")
    workdir = str(tmp_path / "run")
    monkeypatch.chdir(ROOT)  # then evaluated and predicted from another directory

    def descent(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, evaluated, err = descent("eval", "--workdir", workdir)
    assert code == 0, err
    code, predicted, err = descent("predict", "--workdir", workdir, str(files / "iris.csv"))
    assert code == 0, err
    shutil.move(tmp_path / "tables", tmp_path / "moved")
    code, without_data, err = fresh("predict", "--workdir", workdir, str(files / "iris.csv"))
    assert code == 0, err
    assert without_data == predicted and len(predicted.splitlines()) == 150
    code, _, err = descent("eval", "--workdir", workdir)
    assert code == 2 and err.strip().endswith("say where it is now with --data-path")
    code, out, err = descent("eval", "--workdir", workdir, "--data-path",
                             str(tmp_path / "moved" / "iris.csv"))
    assert code == 0 and out == evaluated, err
    code, _, err = descent("eval", "--workdir", workdir, "--data-path",
                           str(files / "diabetes.csv"))
    assert code == 2 and "the data of this run changed since it trained" in err
    code, _, err = descent("eval", "--workdir", workdir, "--data-path", "tables/iris.csv")
    assert code == 2 and err.strip() == (
        "descent: error: --data-path 'tables/iris.csv' does not exist; point it at the file or "
        "folder the run trained on")


def test_predict_checks_npy_rows_as_the_run_read_its_own_with_the_data_gone(files, tmp_path,
                                                                            capsys):
    shutil.copy(files / "digits.npz", tmp_path / "digits.npz")
    train(capsys, tmp_path / "run", MLP, "--config.dataset.name=arrays",
          f"--config.dataset.path={tmp_path}/digits.npz")
    os.remove(tmp_path / "digits.npz")
    with np.load(files / "digits.npz") as f:
        pixels = f["x_test"][:3, :, :, None]  # with the channel axis the run added
    outputs = {}
    for name, rows, code, said in [
            ("pixels", pixels, 0, "row 3: "),
            ("grey", pixels[..., 0], 0, "row 3: "),  # (N, 8, 8), as the .npz held them
            ("floats", pixels / 255.0, 2, "this run reads pixels, integers 0..255"),
            ("flat", pixels.reshape(3, -1), 2, "this run reads rows of shape (8, 8, 1)")]:
        np.save(tmp_path / f"{name}.npy", rows)
        assert main(["predict", "--workdir", str(tmp_path / "run"),
                     str(tmp_path / f"{name}.npy")]) == code, name
        out, err = capsys.readouterr()
        assert said in (out if code == 0 else err), (name, out, err)
        outputs[name] = [line.split(": ", 1)[1] for line in out.splitlines()]
    assert outputs["grey"] == outputs["pixels"]


def test_float_features_are_standardised_alike_in_an_npz_a_csv_and_from_python(tmp_path):
    wine = load_wine()  # 13 measurements in units from 0.1 to 1,680: unscaled, they swamp a net
    x, y = wine.data.astype(np.float32), wine.target
    np.savez(tmp_path / "wine.npz", x_train=x, y_train=y)
    write_csv(tmp_path / "wine.csv", [*wine.feature_names, "class"],
              [[repr(float(v)) for v in row] + [t] for row, t in zip(x, y)])
    datasets = [data.load("arrays", path=str(tmp_path / "wine.npz")),
                data.load("csv", path=str(tmp_path / "wine.csv")),
                data.load("arrays", arrays={"x_train": x, "y_train": y})]
    batches = [next(d.train_batches(32, seed=0, epoch=0)) for d in datasets]
    for batch in batches[1:]:
        np.testing.assert_array_equal(batch["inputs"], batches[0]["inputs"])
        np.testing.assert_array_equal(batch["targets"], batches[0]["targets"])
    train_inputs = datasets[0].model_inputs(datasets[0].splits["train"]["inputs"])
    np.testing.assert_allclose(train_inputs.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train_inputs.std(0), 1, atol=1e-5)
    raw = data.load("arrays", path=str(tmp_path / "wine.npz"), standardize=False)
    assert "float inputs used as they are (dataset.standardize=false)" in raw.summary()
    np.testing.assert_array_equal(raw.model_inputs(x[:5]), x[:5])
    # a checkpoint recorded before this rule trained on the floats as they were: so it restores
    old = {**datasets[0].description()}
    old["options"] = {k: v for k, v in old["options"].items() if k != "standardize"}
    np.testing.assert_array_equal(data.from_description(old).model_inputs(x[:5]), x[:5])
    config = load_config(MLP)
    config.dataset.name, config.dataset.path = "arrays", str(tmp_path / "wine.npz")
    config.parallel.mesh, config.steps = "data=1", 100
    summary = run.train_and_evaluate(config, str(tmp_path / "run"), console=False)
    assert summary["test"]["accuracy"] >= 0.9  # unscaled, it stayed near a third


def test_arrays_from_python_train_restore_and_predict(tmp_path):
    from experiments.config import load_config

    digits = load_digits()
    x, y = digits.images.astype(np.uint8), digits.target  # 0..16 grey levels, as uint8
    dataset = data.load("arrays", arrays={"x_train": x, "y_train": y,
                                          "class_names": np.array(NAMES)})
    assert dataset.class_names == NAMES and set(dataset.splits) == {"train", "validation",
                                                                     "test"}
    config = load_config(MLP)
    config.dataset.name = "arrays"
    summary = run.train_and_evaluate(config, str(tmp_path), console=False, dataset=dataset)
    with pytest.raises(ValueError, match="trained on arrays passed from Python"):
        run.restore(str(tmp_path))
    restored = run.restore(str(tmp_path), dataset=dataset)
    assert restored.step == summary["test"]["step"]
    probabilities = run.predict(restored, x[:5])
    assert probabilities.shape == (5, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    changed = data.load("arrays", arrays={"x_train": x[:-1], "y_train": y[:-1]})
    with pytest.raises(ValueError, match="changed since it trained"):
        run.restore(str(tmp_path), dataset=changed)


def test_a_checkpoint_holds_the_datasets_description(files, tmp_path, capsys):
    train(capsys, tmp_path, MLP, "--config.dataset.name=csv",
          f"--config.dataset.path={files}/iris.csv")
    steps = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    with open(tmp_path / "checkpoints" / str(steps[-1]) / "dataset" / "metadata") as f:
        described = json.load(f)
    assert described["name"] == "csv" and described["classes"] == ["setosa", "versicolor",
                                                                   "virginica"]
    assert described["options"]["path"] == f"{files}/iris.csv"
    assert described["target"] == "species" and described["outputs"] == 3
    assert described["stored"] == "float32" and described["normalization"]["pixels"] is False
    assert len(described["normalization"]["mean"]) == len(described["normalization"]["std"]) == 4
    assert described["examples"] == {"train": 105, "validation": 15, "test": 30}


BAD = [
    (["--config.dataset.name=arrays"], "dataset 'arrays' needs --config.dataset.path=FILE.npz"),
    (["--config.dataset.name=arrays", "--config.dataset.path={F}/nowhere.npz"],
     "dataset.path '{F}/nowhere.npz' does not exist; point it at an .npz file"),
    (["--config.dataset.name=arrays", "--config.dataset.path={F}/iris.csv"],
     "{F}/iris.csv is not an .npz archive (a zip of numpy arrays); save the arrays with "
     "numpy.savez"),
    (["--config.dataset.name=image_folder", "--config.dataset.path={F}/folder/one"],
     "holds 0 class folder(s): put each class's images in a folder of its own, at least two"),
    (["--config.dataset.name=image_folder", "--config.dataset.path={F}/sparse"],
     "sparse/dog holds no images (.png, .jpg, .jpeg, .bmp, .gif, .webp); every class folder needs its "
     "images directly inside it"),
    (["--config.dataset.name=image_folder", "--config.dataset.path={F}/iris.csv"],
     "is a file; image_folder reads a folder with a folder of images per class"),
    (["--config.dataset.name=csv", "--config.dataset.path={F}/iris.csv",
      "--config.dataset.target=colour"],
     "dataset.target='colour' is not a column of {F}/iris.csv; its columns: sepal length (cm)"),
    (["--config.dataset.name=csv", "--config.dataset.path={F}/iris.csv",
      "--config.dataset.target=sepal width (cm)"],
     "line 2, column 'species': 'setosa' is not a number; feature columns must be numeric"),
    (["--config.dataset.name=csv", "--config.dataset.path={F}/iris.csv",
      "--config.dataset.image_size=32"],
     "dataset 'csv' takes no option 'image_size'; its options: path, target, split_seed"),
    (["--config.dataset.name=csv", "--config.dataset.path={F}/iris.csv",
      "--config.dataset.validation_fraction=1.5"],
     "config.dataset.validation_fraction=1.5 must be at least 0 and below 1"),
    (["--config.dataset.name=csv", "--config.dataset.path={F}/iris.csv",
      "--config.dataset.validation_fraction=0.5", "--config.dataset.test_fraction=0.5"],
     "dataset.validation_fraction + dataset.test_fraction = 1 leaves nothing to train on"),
    (["--config.dataset.name=csv", "--config.dataset.path={F}/diabetes.csv"],
     "loss.name='cross_entropy' does not apply to a regression dataset (float targets); use: "
     "mse"),
    (["--config.dataset.name=mnist", "--config.dataset.path={F}/iris.csv"],
     "dataset 'mnist' takes no option 'path'; its options: data_dir, split_seed, "
     "validation_fraction"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_own_data_is_one_line_exit_2_before_anything_is_written(files, tmp_path, capsys,
                                                                    overrides, message):
    overrides = [o.replace("{F}", str(files)) for o in overrides]
    code = main(["train", "--config", MLP, "--workdir", str(tmp_path / "run"), *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message.replace("{F}", str(files)) in err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_table_with_a_byte_order_mark_predicts_as_the_same_table_without(files, tmp_path,
                                                                          capsys):
    train(capsys, tmp_path / "run", MLP, "--config.dataset.name=csv",
          f"--config.dataset.path={files}/iris.csv", "--config.dataset.target=species")
    text = (files / "iris.csv").read_text()
    marked, plain = tmp_path / "marked.csv", tmp_path / "plain.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as spreadsheets save UTF-8
    plain.write_text(text)
    outputs = []
    for table in (marked, plain):
        assert main(["predict", "--workdir", str(tmp_path / "run"), str(table)]) == 0
        outputs.append([line.split(": ", 1)[1] for line in
                        capsys.readouterr().out.strip().splitlines()])
    assert len(outputs[0]) == 150 and outputs[0] == outputs[1]


def test_folders_named_test_are_classes_and_names_from_files_are_printed_escaped(tmp_path,
                                                                                capsys):
    """Without a train/ folder every folder is a class; a class name holding a terminal's
    escape sequence is printed as text, and a photo of another size than the run's images is
    resized with a warning naming both sizes."""
    classes = ("test", "\x1b[31mred")
    for c, name in enumerate(classes):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("L", (8, 8), color=c * 200 + i).save(tmp_path / "imgs" / name / f"{i}.png")
    Image.new("L", (300, 200), color=5).save(tmp_path / "photo.png")
    lines = train(capsys, tmp_path / "run", MLP, "--config.dataset.name=image_folder",
                  f"--config.dataset.path={tmp_path}/imgs", "--config.dataset.grayscale=True",
                  "--config.dataset.batch_size=8")
    assert "2 classes (\\x1b[31mred, test)" in next(l for l in lines if l.startswith("data: "))
    assert main(["predict", "--workdir", str(tmp_path / "run"), str(tmp_path / "photo.png")]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\\x1b[31mred " in out
    assert err.strip() == (f"warning: {tmp_path}/photo.png is 300x200 pixels; resized to the "
                           f"run's 8x8 inputs")
