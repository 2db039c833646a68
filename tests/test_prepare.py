"""`descent data prepare` runs tfds's own builders offline: Fashion-MNIST from the files Debian
ships, CIFAR-10/100, Imagenette and ImageNet from small archives in their official formats; a
file that is not the expected one is named with both checksums; an unprepared dataset names the
command that prepares it."""
import gzip
import hashlib
import importlib.util
import io
import logging
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

import data
from data import prepare
from data.tfds_source import data_source

from conftest import ROOT

# Debian's dataset-fashion-mnist package, unpacked by .ci/run (apt-get download, dpkg-deb -x)
DEBIAN_FASHION = os.path.join(ROOT, "build", "dataset-fashion-mnist", "usr", "share", "datasets",
                              "fashion-mnist")


def needs_tensorflow():
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("preparing datasets needs TensorFlow: pip install -e '.[tf]'")


def descent_prepare(*commands: list[str], accept: dict | None = None):
    """Runs `descent data prepare ...` for each of `commands` in one fresh process (TensorFlow
    stays out of the test process); `accept` adds {dataset: {file: content MD5}} to the content
    checks, for archives these tests made themselves."""
    script = ("import sys\nfrom data import prepare\nfrom experiments.cli import main\n"
              f"for name, files in {accept or {}!r}.items():\n"
              "    prepare.KNOWN_CONTENT_MD5.setdefault(name, {}).update(files)\n"
              f"for argv in {list(commands)!r}:\n"
              "    code = main(argv)\n"
              "    if code:\n"
              "        sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_fashion_mnist_as_debian_ships_it_prepares_and_trains(tmp_path):
    needs_tensorflow()
    if not os.path.isdir(DEBIAN_FASHION):
        pytest.skip(f"Debian's dataset-fashion-mnist is not unpacked at {DEBIAN_FASHION} "
                    f"(.ci/run fetches it with apt-get download)")
    result = descent_prepare(["data", "prepare", "fashion_mnist", "--manual-dir",
                              DEBIAN_FASHION, "--data-dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    warned = result.stderr.splitlines()
    assert sum(l.startswith("warning: ") and "its decompressed content matches the official file"
               in l for l in warned) == 4
    assert lines[-1] == (f"prepared fashion_mnist in {tmp_path}/fashion_mnist/3.0.1; train with "
                         f"--config.dataset.data_dir={tmp_path}")
    fashion = data.load("fashion_mnist", data_dir=str(tmp_path))
    assert fashion.class_names[:3] == ("T-shirt/top", "Trouser", "Pullover")
    assert {s: fashion.num_examples(s) for s in fashion.splits} == {
        "train": 54000, "validation": 6000, "test": 10000}
    from experiments import run
    from experiments.config import load_config
    config = load_config(os.path.join(ROOT, "experiments", "configs", "mnist_cnn.py") + ":tiny")
    config.dataset.name, config.dataset.data_dir, config.steps = "fashion_mnist", str(tmp_path), 60
    summary = run.train_and_evaluate(config, str(tmp_path / "run"), console=False)
    assert summary["test"]["examples"] == 10000 and summary["test"]["accuracy"] > 0.5


def cifar_archive(path, top: str, label_bytes: int, names: dict, files: dict, rng):
    """A .tar.gz in CIFAR's binary format: per record, the label byte(s), then 1024 red, 1024
    green and 1024 blue pixel bytes. Returns {file: (labels, HWC images)}."""
    written = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, payload):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, text in names.items():
            add(name, text.encode())
        for name, count in files.items():
            labels = (np.arange(count * label_bytes).reshape(count, label_bytes) % 10
                      ).astype(np.uint8)
            images = rng.integers(0, 256, (count, 32, 32, 3)).astype(np.uint8)
            planes = images.transpose(0, 3, 1, 2).reshape(count, -1)
            add(name, np.concatenate([labels, planes], axis=1).tobytes())
            written[name] = (labels, images)
    return written


def jpeg(rng, size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3)).astype(np.uint8)).save(out, "JPEG")
    return out.getvalue()


def add_bytes(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def content_md5(path) -> str:
    with gzip.open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def test_cifar_imagenette_and_imagenet_builders_prepare_from_archives_in_official_form(tmp_path):
    needs_tensorflow()
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    cifar10 = cifar_archive(raw / "cifar-10-binary.tar.gz", "cifar-10-batches-bin", 1,
                            {"batches.meta.txt": "\n".join(f"class{i}" for i in range(10))},
                            {**{f"data_batch_{i}.bin": 12 for i in range(1, 6)},
                             "test_batch.bin": 10}, rng)
    cifar_archive(raw / "cifar-100-binary.tar.gz", "cifar-100-binary", 2,
                  {"coarse_label_names.txt": "\n".join(f"c{i}" for i in range(20)),
                   "fine_label_names.txt": "\n".join(f"f{i}" for i in range(100))},
                  {"train.bin": 30, "test.bin": 10}, rng)
    with tarfile.open(raw / "imagenette2.tgz", "w:gz") as tar:
        for split, count in (("train", 3), ("val", 2)):
            for synset in ("n01440764", "n02102040"):
                for i in range(count):
                    add_bytes(tar, f"imagenette2/{split}/{synset}/{synset}_{i}.JPEG", jpeg(rng))
    with tarfile.open(raw / "ILSVRC2012_img_train.tar", "w") as tar:  # a tar of tars per synset
        for synset in ("n01440764", "n01443537"):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as per_class:
                for i in range(2):
                    add_bytes(per_class, f"{synset}_{i}.JPEG", jpeg(rng))
            add_bytes(tar, f"{synset}.tar", inner.getvalue())
    with tarfile.open(raw / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(1, 4):
            add_bytes(tar, f"ILSVRC2012_val_{i:08d}.JPEG", jpeg(rng))
    accept = {name: {f: content_md5(raw / f)} for name, f in (
        ("cifar10", "cifar-10-binary.tar.gz"), ("cifar100", "cifar-100-binary.tar.gz"),
        ("imagenette", "imagenette2.tgz"))}
    names = ("cifar10", "cifar100", "imagenette", "imagenet2012")
    result = descent_prepare(*[["data", "prepare", n, "--manual-dir", str(raw), "--data-dir",
                                str(tmp_path / "tfds")] for n in names], accept=accept)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in names:
        assert f"prepared {name} in {tmp_path}/tfds/{name}/" in result.stdout
    assert not os.path.exists(tmp_path / "tfds" / "downloads")

    # read back without TensorFlow, as training reads them: the pixels and labels written
    train = data_source("cifar10", "train", str(tmp_path / "tfds"))
    assert len(train) == 60
    written = {np.asarray(image).tobytes(): int(label[0]) for name, (labels, images)
               in cifar10.items() if name != "test_batch.bin"
               for label, image in zip(labels, images)}
    read = {np.asarray(ex["image"]).tobytes(): int(ex["label"]) for ex in
            (train[i] for i in range(len(train)))}  # tfds stores them in its own order
    assert read == written
    loaded = data.load("cifar10", data_dir=str(tmp_path / "tfds"), validation_fraction=0.25)
    assert loaded.class_names == tuple(f"class{i}" for i in range(10))
    assert {s: loaded.num_examples(s) for s in loaded.splits} == {"train": 45, "validation": 15,
                                                                   "test": 10}
    fine = data.load("cifar100", data_dir=str(tmp_path / "tfds"), validation_fraction=0)
    assert fine.num_examples("test") == 10 and fine.num_classes == 100
    nette = data.load("imagenette", data_dir=str(tmp_path / "tfds"), image_size=32)
    assert (nette.num_examples("train"), nette.num_examples("validation")) == (6, 4)
    net = data.load("imagenet2012", data_dir=str(tmp_path / "tfds"), image_size=32)
    assert (net.num_examples("train"), net.num_examples("validation")) == (4, 3)
    batch = next(net.train_batches(2, seed=0, epoch=0))
    assert batch["inputs"].shape == (2, 32, 32, 3)


def test_a_file_that_is_not_the_datasets_is_named_with_what_was_expected_and_found(tmp_path):
    class Info:  # what tfds registers for a url
        filename = "train-labels-idx1-ubyte.gz"
        checksum = "ab" * 32

    wrong = tmp_path / Info.filename
    with gzip.open(wrong, "wb") as f:  # parses, but holds other labels
        f.write(b"\x00\x00\x08\x01" + bytes(100))
    with pytest.raises(ValueError) as e:
        prepare.checked("fashion_mnist", "https://example/x.gz", Info, str(tmp_path), [])
    message = str(e.value)
    assert message.startswith(f"{wrong} is not fashion_mnist's train-labels-idx1-ubyte.gz: "
                              f"expected SHA-256 {'ab' * 32} or content MD5 "
                              f"9018921c3c673c538a1fc5bad174d6f9, found SHA-256 ")
    assert "fetch it again" not in message
    wrong.write_bytes(b"\x1f\x8b\x08\x00cut short")  # a gzip header, then nothing
    with pytest.raises(ValueError, match="cannot be decompressed .*; fetch it again"):
        prepare.checked("fashion_mnist", "https://example/x.gz", Info, str(tmp_path), [])
    with pytest.raises(FileNotFoundError, match="--manual-dir must hold the four Fashion-MNIST"):
        prepare.checked("fashion_mnist", "https://example/x.gz", Info, str(tmp_path / "no"), [])


def test_an_unprepared_dataset_names_the_command_that_prepares_it(tmp_path, caplog):
    with pytest.raises(ValueError) as e:
        data_source("fashion_mnist", "train", str(tmp_path))
    assert str(e.value) == (f"dataset 'fashion_mnist' (split 'train') is not prepared in "
                            f"{tmp_path}; prepare it with `descent data prepare fashion_mnist "
                            f"--manual-dir DIR --data-dir {tmp_path}`, DIR holding the files "
                            f"tfds would download")
    with pytest.raises(ValueError, match=r"tfds build svhn_cropped --data_dir .* "
                                         r"--file_format=array_record, then copy"):
        data_source("svhn_cropped", "train", str(tmp_path))
    # what `tfds build` writes by default: TFRecord, which descent cannot read
    version = tmp_path / "mnist" / "3.0.1"
    version.mkdir(parents=True)
    (version / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is prepared in .* as TFRecord files.*build it again: "
                                         r"tfds build mnist .*--file_format=array_record"):
        data_source("mnist", "train", str(tmp_path))
    caplog.set_level(logging.DEBUG, "data.tfds_source")  # --verbose: tfds's own reason as well
    with pytest.raises(ValueError, match=r"\[tfds: \w+"):
        data_source("fashion_mnist", "train", str(tmp_path))
