"""Warm start (`init_from`) and frozen parameters (`optimizer.freeze`): a fine-tuning run takes
the arrays of another run that fit, initialises the rest, says which, and keeps what it freezes
bit-identical; a resumed one never reads its source again; bad input is one line, exit 2."""
import logging
import os
import shutil

import numpy as np
import pytest
from sklearn.datasets import load_digits

import data
from experiments.cli import main
from experiments.config import load_config, model_fields
from experiments.run import build, restore, train_and_evaluate
from train import warm_start
from train.state import named
from train.trainer import Trainer

from helpers import tiny_config
from test_cli import checkpoint_bytes, error_of

MLP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                   "configs", "digits_mlp.py")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A run of the tiny MLP on digits (10 classes), on one device."""
    workdir = str(tmp_path_factory.mktemp("source"))
    config = tiny_config(**{"parallel.mesh": "data=1"})
    train_and_evaluate(config, workdir, console=False)
    return workdir


def three_digits():
    """Digits 0, 1 and 2 only, as arrays from Python: the same inputs, a 3-class head."""
    digits = load_digits()
    keep = digits.target < 3
    return data.load("arrays", arrays={"x_train": digits.images[keep, :, :, None] / 16.0,
                                       "y_train": digits.target[keep]})


def as_arrays(tree) -> dict:
    return {k: np.asarray(v) for k, v in named(tree).items()}


def params_of(workdir, which="latest"):
    return as_arrays(restore(workdir, which).state.params)


def test_a_warm_start_loads_what_fits_initialises_the_rest_and_says_which(source, tmp_path,
                                                                           caplog):
    config = tiny_config(**{"init_from": source, "optimizer.freeze": "hidden/*",
                            "optimizer.ema_decay": 0.9})  # on 8 devices: another layout
    with caplog.at_level(logging.DEBUG, logger="train.warm_start"):  # console=False: DEBUG
        summary = train_and_evaluate(config, str(tmp_path), console=False,
                                     dataset=three_digits())
    said = caplog.text
    assert "init_from: 4 of 6 arrays loaded from the checkpoint at step 78" in said
    assert "params/head/kernel (64x10 in the checkpoint, 64x3 here)" in said
    assert "params/head/bias (10 in the checkpoint, 3 here)" in said
    theirs = params_of(source, "best")
    ours, ema = (as_arrays(getattr(summary["state"], part)) for part in ("params", "ema_params"))
    hidden = [k for k in theirs if k.startswith("hidden/")]
    assert len(hidden) == 4 and summary["state"].step > 10
    for name in hidden:  # loaded, then frozen through every step of adam; the moving average
        assert np.array_equal(ours[name], theirs[name]), name  # started at the loaded ones
        assert np.array_equal(ema[name], theirs[name]), name
    assert ours["head/kernel"].shape == (64, 3)
    assert not np.array_equal(ours["head/bias"], np.zeros(3))  # trained from its fresh start


@pytest.mark.parametrize("optimizer", [
    {"optimizer.name": "sgd", "optimizer.weight_decay": 1e-2, "optimizer.clip_norm": 0.5},
    {"optimizer.name": "adamw", "optimizer.weight_decay": 0.1},
    {"optimizer.name": "rmsprop"},
], ids=lambda o: o["optimizer.name"])
def test_frozen_arrays_stay_bit_identical_and_the_others_train(tmp_path, optimizer):
    config = tiny_config(**{"optimizer.freeze": "hidden/0/*,head/bias", "steps": 12,
                            **optimizer})
    model, dataset = build(config, deferred=True)
    start = as_arrays(Trainer(config, model, dataset).initial_state.params)
    train_and_evaluate(config, str(tmp_path), console=False)
    end = params_of(str(tmp_path))
    for name in start:
        frozen = name.startswith("hidden/0/") or name == "head/bias"
        assert np.array_equal(end[name], start[name]) == frozen, name


def test_a_resumed_warm_start_reads_no_source_and_equals_an_uninterrupted_one(source, tmp_path):
    copied = str(tmp_path / "copied-source")
    shutil.copytree(source, copied)
    config = tiny_config(**{"init_from": copied, "steps": 20, "checkpoint.every": 10,
                            "eval_every": 10,  # a schedule that does not follow `steps`:
                            "optimizer.schedule": "constant"})  # stopping at 10 changes nothing
    train_and_evaluate(config, str(tmp_path / "whole"), console=False)
    config.steps = 10
    train_and_evaluate(config, str(tmp_path / "halves"), console=False)
    shutil.rmtree(copied)  # a resume needs it no more
    config.steps = 20
    train_and_evaluate(config, str(tmp_path / "halves"), console=False)
    whole, halves = params_of(str(tmp_path / "whole")), params_of(str(tmp_path / "halves"))
    assert whole.keys() == halves.keys()
    for name in whole:
        assert np.array_equal(whole[name], halves[name]), name


@pytest.mark.parametrize("override,message", [
    ("--config.init_from=SOURCE/nowhere", "SOURCE/nowhere holds no checkpoint; name the work "
     "directory of a run that saved one"),
    ("--config.init_from=EMPTY", "EMPTY holds no checkpoint"),
    ("--config.init_from=SOURCE:999", "no checkpoint at step 999 in SOURCE/checkpoints; saved "
     "steps: "),
    ("--config.init_from=s3://bucket/run", "init_from 's3://bucket/run': s3:// is not supported"),
    ("--config.model.name=cnn --config.init_from=SOURCE", "is a run of model 'mlp', and this "
     "run trains 'cnn'"),
    ("--config.optimizer.freeze=backbone/*", "optimizer.freeze pattern 'backbone/*' matches no "
     "parameter of this model; its 6 parameter arrays are named like head/bias, head/kernel"),
])
def test_bad_warm_starts_and_freezes_are_one_line_exit_2_and_write_nothing(
        capsys, source, tmp_path, override, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    before = checkpoint_bytes(source)
    fill = {"SOURCE": source, "EMPTY": str(empty)}
    args = override.split()
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    workdir = tmp_path / "run"
    code, err = error_of(capsys, "train", "--config", MLP + ":tiny", "--workdir", str(workdir),
                         *args)
    assert code == 2 and message in err, err
    assert not workdir.exists()
    assert checkpoint_bytes(source) == before


@pytest.mark.parametrize("damaged", ["state/_METADATA", "state/manifest.ocdbt"])
def test_a_damaged_source_is_refused_before_anything_is_written_and_left_as_it_is(
        capsys, source, tmp_path, damaged):
    """The metadata a warm start plans from is read only once the files pass their checksums:
    a damaged one would otherwise fail inside orbax with a traceback."""
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    step = max(int(s) for s in os.listdir(copy / "checkpoints") if s.isdigit())
    path = copy / "checkpoints" / str(step) / damaged
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    before = checkpoint_bytes(str(copy))
    workdir = tmp_path / "run"
    code, err = error_of(capsys, "train", "--config", MLP + ":tiny", "--workdir", str(workdir),
                         f"--config.init_from={copy}:{step}")
    assert code == 2, err
    assert f"init_from: the checkpoint at step {step} in {copy} is damaged ({damaged} does not " \
           f"match its checksum); name another step" in err, err
    assert not workdir.exists()
    assert checkpoint_bytes(str(copy)) == before


def test_a_warm_start_restacks_layers_between_a_loop_and_model_scan_layers(tmp_path, capsys):
    """A BERT-style encoder of 3 blocks trained with its blocks in a loop starts a run with
    model.scan_layers (on 8 devices), and a loop's state (on 1) loads from that run: each
    block's arrays arrive as they were saved (frozen to stay so), one by one into the stack and
    back out of it."""
    bert = ["--config.model.name=bert", "--config.model.layers=3", "--config.model.heads=2",
            "--config.model.width=16", "--config.steps=2", "--config.optimizer.freeze=blocks/*"]

    def train(workdir, *more):
        assert main(["train", "--config", MLP + ":tiny", "--workdir", str(tmp_path / workdir),
                     *bert, *more]) == 0, capsys.readouterr().err
        return params_of(str(tmp_path / workdir))

    loop = train("loop", "--config.parallel.mesh=data=1")
    capsys.readouterr()
    stacked = train("stacked", f"--config.init_from={tmp_path / 'loop'}",
                    "--config.model.scan_layers=true")
    said = capsys.readouterr().out
    assert "init_from: 22 of 22 arrays loaded" in said  # 12 per block, stacked
    assert "init_from: 12 of them stacked from layers saved one by one" in said
    assert stacked["blocks/up/kernel"].shape == (3, 16, 64)
    config = load_config(MLP + ":tiny")
    config.model = model_fields("bert", {"layers": 3, "heads": 2, "width": 16})
    config.parallel.mesh = "data=1"
    like = Trainer(config, *build(config)).initial_state
    source = warm_start.plan(str(tmp_path / "stacked"), like, "bert")
    assert len(source.restacked) == 36 and not source.fresh  # 3 blocks of 12 from the stack
    back = as_arrays(warm_start.load(source, like).params)
    for i in range(3):
        for name in ("up/kernel", "attention/qkv/bias", "norm2/scale"):
            assert np.array_equal(stacked[f"blocks/{name}"][i], loop[f"blocks/{i}/{name}"])
            assert np.array_equal(back[f"blocks/{i}/{name}"], loop[f"blocks/{i}/{name}"])
    assert np.array_equal(back["head/kernel"], stacked["head/kernel"])
