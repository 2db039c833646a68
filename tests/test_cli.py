"""The `descent` command as a user runs it: the main path, and one readable line for bad input."""
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

import data
from experiments.cli import main

from conftest import ROOT, config_path, xla_flags

MLP = config_path("digits_mlp.py")
TINY = MLP + ":tiny"


def descent(*args, cwd=None):
    """Runs the installed console script in a fresh process, as a user would."""
    env = {**os.environ, "XLA_FLAGS": xla_flags()}  # a user's machine: one CPU device
    script = os.path.join(os.path.dirname(sys.executable), "descent")
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_train_then_eval_from_the_command_line(tmp_path):
    workdir = str(tmp_path / "run")
    trained = descent("train", "--config", TINY, "--workdir", workdir,
                      "--config.optimizer.name=adamw", "--config.epochs", "3")
    assert trained.returncode == 0, trained.stderr
    assert "test accuracy" in trained.stdout
    assert sorted(os.listdir(workdir)) == sorted(
        [".descent.lock", "checkpoints", "metrics.jsonl", "curves.png", "tensorboard", next(
            f for f in os.listdir(workdir) if f.startswith("eval_test_"))])
    config = json.load(open(os.path.join(workdir, "checkpoints", "117", "config", "metadata")))
    assert config["optimizer"]["name"] == "adamw" and config["epochs"] == 3

    evaluated = descent("eval", "--workdir", workdir, "--checkpoint", "latest")
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.startswith("checkpoint step 117: test accuracy ")
    result = json.load(open(os.path.join(workdir, "eval_test_117.json")))
    assert result["examples"] == 360 and 0.5 < result["accuracy"] <= 1.0


def test_python_m_experiments_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "experiments", "--help"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0 and "train" in result.stdout and "eval" in result.stdout


def test_a_usage_error_is_one_line_with_exit_code_2(tmp_path):
    result = descent("train", "--config", TINY, "--workdir", str(tmp_path),
                     "--config.optimizer.nmae=adam")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "unknown config key 'config.optimizer.nmae'" in result.stderr


def error_of(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    return code, err


@pytest.mark.parametrize("override,message", [
    ("--config.optimzer.name=adam", "unknown config key 'config.optimzer.name'; keys of config: checkpoint, compile_cache, dataset"),
    ("--config.epochs=three", "config.epochs='three' is not an int"),
    ("--config.optimizer.learning_rate=fast", "is not a float"),
    ("--config.model.name=resnet9", "unknown model 'resnet9'; known: bert, cnn, gpt, gru, lstm, mlp, resnet101"),
    ("--config.optimizer.name=lion", "unknown optimizer 'lion'; known: adam, adamw, rmsprop, sgd"),
    ("--config.model.activation=swish", "unknown activation 'swish'; known: gelu, relu, sigmoid, tanh"),
    ("--config.dataset.name=imagenet",
     f"unknown dataset 'imagenet'; known: {', '.join(sorted(data.DATASETS))}"),
    ("--config.loss.name=hinge", "unknown loss 'hinge'"),
    ("--config.dataset.batch_size=30", "use 24 or 32"),
    ("--config.early_stopping.monitor=accuracy", "is not one of eval_accuracy, eval_loss"),
    ("--config.parallel.mesh=model=8", "names an unknown axis 'model'; the axes are data, fsdp, tensor"),
    ("--config.parallel.mesh=data=16", "needs 16 devices but 8 cpu devices were found"),
    ("--config.parallel.mesh=tensor=8 --config.model.width=36", "params/hidden/0/bias: its "
     "dimension 0 (mlp) of size 36 does not divide over the 8 devices of the tensor axis"),
    ("--config.parallel.rules=mlp=data", "parallel.rules entry 'mlp=data' names no mesh axis a "
     "parameter is split over: fsdp or tensor"),
    ("--config.parallel.rules=hidden=tensor", "parallel.rules entry 'hidden=tensor' is not "
     "NAME=AXIS with NAME one of mlp, heads"),
    ("--config.parallel.mesh=tensor=2 --config.parallel.strategy=fsdp", "parallel.strategy=fsdp "
     "reads the mesh's data axis as fsdp"),
    ("--config.parallel.mesh=tensor=8 --config.parallel.strategy=pmap", "parallel.strategy=pmap "
     "maps the step over the data axis alone"),
    ("--config.dataset.batch_size=0", "config.dataset.batch_size=0 must be at least 1"),
    ("--config.dataset.batch_size=-8", "config.dataset.batch_size=-8 must be at least 1"),
    ("--config.dataset.eval_batch_size=0", "config.dataset.eval_batch_size=0 must be at least 1"),
    ("--config.dataset.train_examples=-5", "config.dataset.train_examples=-5 must be at least 0"),
    ("--config.epochs=0", "config.epochs=0 must be at least 1 (or set config.steps)"),
    ("--config.steps=-1", "config.steps=-1 must be at least 0"),
    ("--config.steps=100000000000000000000", "config.steps=100000000000000000000 is too large: "
     "integers must be below 2**31 (2,147,483,648), the range of JAX's 32-bit step counter"),
    ("--config.epochs=2147483648", "config.epochs=2147483648 is too large"),
    ("--config.seed=-1", "config.seed=-1 must be at least 0"),
    ("--config.optimizer.learning_rate=nan", "config.optimizer.learning_rate=nan is not a "
     "finite number"),
    ("--config.optimizer.learning_rate=1e999", "config.optimizer.learning_rate=inf is not a "
     "finite number"),
    ("--config.model.dropout=nan", "config.model.dropout=nan is not a finite number"),
    ("--config.model.dropout=inf", "config.model.dropout=inf is not a finite number"),
    ("--config.log_every=0", "config.log_every=0 must be at least 1"),
    ("--config.eval_every=-1", "config.eval_every=-1 must be at least 0"),
    ("--config.checkpoint.every=-5", "config.checkpoint.every=-5 must be at least 0"),
    ("--config.checkpoint.keep=0", "config.checkpoint.keep=0 must be at least 1"),
    ("--config.checkpoint.keep_best=-1", "config.checkpoint.keep_best=-1 must be at least 0"),
    ("--config.early_stopping.patience=-1", "config.early_stopping.patience=-1 must be at least"),
    ("--config.model.width=0", "an MLP needs model.depth >= 0 and model.width >= 1"),
    ("--config.model.depth=-1", "an MLP needs model.depth >= 0 and model.width >= 1"),
    ("--config.model.dropout=1.0", "config.model.dropout=1.0 must be at least 0 and below 1"),
    ("--config.model.dropout=-0.1", "config.model.dropout=-0.1 must be at least 0 and below 1"),
    ("--config.optimizer.learning_rate=0", "config.optimizer.learning_rate=0.0 must be above 0"),
    ("--config.optimizer.learning_rate=-0.1", "learning_rate=-0.1 must be above 0"),
    ("--config.optimizer.momentum=1.5", "config.optimizer.momentum=1.5 must be at least 0 and "
                                         "below 1"),
    ("--config.optimizer.weight_decay=-1", "config.optimizer.weight_decay=-1.0 must be at least"),
    ("--config.optimizer.clip_norm=-1", "config.optimizer.clip_norm=-1.0 must be at least 0"),
    ("--config.optimizer.decay_factor=0", "config.optimizer.decay_factor=0.0 must be above 0"),
    ("--config.optimizer.warmup_steps=-3", "config.optimizer.warmup_steps=-3 must be at least 0"),
    ("--config.loss.label_smoothing=1", "config.loss.label_smoothing=1.0 must be at least 0 and"),
    ("--config.loss.chunk=-4", "config.loss.chunk=-4 must be at least 0"),
    ("--config.loss.chunk=4", "loss.chunk=4 applies to a language model's logits per position "
     "(model.name=gpt), not to MLP; set loss.chunk=0"),
    ("--config.optimizer.accumulate_steps=0", "config.optimizer.accumulate_steps=0 must be at least 1"),
    ("--config.optimizer.accumulate_steps=3", "dataset.batch_size=32 does not split into "
     "optimizer.accumulate_steps=3 micro-batches that divide over 8 devices (it must be a "
     "multiple of 3 x 8 = 24); use 24 or 48"),
    ("--config.optimizer.accumulate_steps=8", "multiple of 8 x 8 = 64); use 64"),
    ("--config.optimizer.ema_decay=1", "config.optimizer.ema_decay=1.0 must be at least 0 and below 1"),
    ("--config.optimizer.ema_decay=-0.5", "config.optimizer.ema_decay=-0.5 must be at least 0"),
    ("--config.early_stopping.monitor=eval_ema_accuracy",
     "is not one of eval_accuracy, eval_loss (what a classification dataset such as digits is "
     "evaluated on without optimizer.ema_decay)"),
    ("--config.profile.start_step=-1", "config.profile.start_step=-1 must be at least 0"),
    ("--config.profile.num_steps=0", "config.profile.num_steps=0 must be at least 1"),
    ("--config.profile.start_step=500", "profile.start_step=500 is after the run's last step 78"),
    ("--config.log.tensorboard=maybe", "config.log.tensorboard='maybe' is not a bool"),
    ("--config.log.curves=maybe", "config.log.curves='maybe' is not a bool"),
    ("--config.dataset.on_device=maybe", "config.dataset.on_device='maybe' is not a bool"),
    ("--config.dataset.standardize=maybe", "config.dataset.standardize='maybe' is not a bool"),
    ("--config.compile_cache=gs://bucket/cache", "config.compile_cache='gs://bucket/cache' is a "
     "URL: the compilation cache is a folder on this machine's file system"),
    (f"--config.compile_cache={ROOT}/README.md", "README.md' is a file, not a folder; name a "
     "folder (it is made if missing), or '' to turn it off"),
    ("--config.dataset.on_device false", "unrecognized arguments: false; a true/false field "
                                         "takes its value after '=': --config.KEY=false"),
    ("--config.model.width=7 --config.model.width=9",
     "--config.model.width is given 2 times; give it once"),
])
def test_bad_config_values_exit_2_naming_the_fix(capsys, tmp_path, trained, override, message):
    for workdir in (tmp_path, trained):  # a new work directory, and one with checkpoints
        before = checkpoint_bytes(workdir)
        code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(workdir),
                             *override.split())
        assert code == 2 and message in err
        assert checkpoint_bytes(workdir) == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A work directory the tiny MLP trained in, for bad input to leave alone."""
    workdir = tmp_path_factory.mktemp("trained")
    assert main(["train", "--config", TINY, "--workdir", str(workdir)]) == 0
    return workdir


def checkpoint_bytes(workdir) -> dict:
    """Every file under `workdir`/checkpoints with its content."""
    root = os.path.join(workdir, "checkpoints")
    return {os.path.join(r, n): open(os.path.join(r, n), "rb").read()
            for r, _, names in os.walk(root) for n in names}


@pytest.mark.parametrize("argv,message", [
    ("eval --workdir W --checkpoint abc", "--checkpoint 'abc' is not 'best', 'latest' or a step"),
    ("eval --workdir W --checkpoint 999", "no checkpoint at step 999"),
    ("eval --workdir W --split nope", "digits has no split 'nope'; its splits: train, validation"),
    ("eval --workdir W --checkpoint latest --checkpoint best",
     "--checkpoint is given twice ('latest' and 'best')"),
    ("eval --workdir W --config.model.width=7", "apply to `descent train`, `plan`, `config show`"),
    ("eval --workdir W --weights ema", "this run keeps no moving average of its weights (it was "
     "trained with optimizer.ema_decay=0); evaluate its raw weights"),
    ("eval --workdir W --weights average", "argument --weights: invalid choice: 'average'"),
    ("predict --workdir W W/x.png --top-k 0", "--top-k 0 must be from 1 to"),
    ("predict --workdir W W/nowhere.png", "nowhere.png is not a file"),
    ("predict --workdir W W/checkpoints", "no image files (.png, .jpg, .jpeg, .bmp, .gif, .webp) "
     "in "),
    ("predict --workdir W/nowhere W/x.png", "no checkpoints in"),
    ("predict --workdir W", "the following arguments are required: FILE_OR_FOLDER"),
    ("eval --workdir W/nowhere", "no checkpoints in"),
    ("sample --workdir W --prompt x", "which is not text; sample from a language model's run"),
    ("sample --workdir W --prompt x --length 0", "--length 0 must be from 1 to 2,147,483,647"),
    ("sample --workdir W --prompt x --length 3000000000", "--length 3000000000 must be from 1"),
    ("sample --workdir W --prompt x --temperature -1", "--temperature -1.0 must be a finite "
     "number, at least 0"),
    ("sample --workdir W --prompt x --temperature nan", "--temperature nan must be a finite"),
    ("sample --workdir W --prompt x --temperature 1e999", "--temperature inf must be a finite"),
    ("sample --workdir W --prompt x --seed -1", "--seed -1 must be from 0 to 2,147,483,647"),
    ("sample --workdir W --prompt=", "the prompt is empty"),
    ("sample --workdir W --prompt x --stop=", "--stop is empty; give the text to stop after"),
    ("sample --workdir W --prompt x --length ten", "argument --length: invalid int value"),
    ("study nope", "unknown study 'nope'"),
    ("study activations --seeds 0", "--seeds 0 must be from 1 to 2,147,483,647"),
    ("data prepare imagenet2013 --manual-dir W", "builds mnist, fashion_mnist, cifar10, cifar100, "
     "imagenette, imagenet2012, tiny_shakespeare from local files, not 'imagenet2013'"),
    ("data prepare imagenet2012 --manual-dir W", "ILSVRC2012_img_train.tar is missing: "
     "--manual-dir must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"),
    ("data prepare mnist --manual-dir W/nowhere", "is not a directory"),
    ("launch-local --num-processes 0 -- train --config CONFIG --workdir W",
     "--num-processes must be from 1 to 64 and --devices-per-process from 1 to 1024 (got 0 and"),
    ("launch-local --num-processes 2 --devices-per-process 100000 -- train --config CONFIG "
     "--workdir W", "(got 2 and 100000)"),
    ("eval --workdir W --coordinator-timeout 0", "--coordinator-timeout 0 must be from 1 to"),
    ("eval --workdir W --coordinator 127.0.0.1:1 --num-processes -2 --process-id 0",
     "--num-processes -2 must be from 1 to"),
    ("predict --workdir W W/x.png --top-k -3", "--top-k -3 must be from 1 to"),
    ("train --config CONFIG --workdir W --sweep optimizer.learning_rate=0.1,inf",
     "learning rates must be finite numbers above 0, each once"),
    ("train --config CONFIG --workdir W --sweep optimizer.learning_rate=nan",
     "learning rates must be finite numbers above 0, each once"),
    ("train --config CONFIG --workdir W --seeds 0-99999999999",
     "--seeds '0-99999999999' names more than 65,536 runs"),
    ("train --config CONFIG --workdir W --seeds 4294967296",
     "config.seed=4294967296 is too large: integers must be below 2**31"),
    ("models --config CONFIG --config.model.dropout=nan",
     "config.model.dropout=nan is not a finite number"),
    ("launch-local --num-processes 2 -- sample --workdir W --prompt x",
     "launch-local runs `train ...` or `eval ...` after `--`"),
    ("launch-local --num-processes 2", "launch-local needs a command after `--`"),
    ("models --config nope.py", "config file 'nope.py' does not exist"),
    ("config show nope.py", "config file 'nope.py' does not exist"),
    ("config show CONFIG --config.modle.width=7", "unknown config key 'config.modle.width'"),
    ("train --config CONFIG:huge --workdir W", "unknown config variant 'huge'; known: tiny"),
    ("train --config CONFIG --workdir W --coordinator 127.0.0.1:1",
     "--coordinator, --num-processes and --process-id go together"),
    ("fly --workdir W", "invalid choice: 'fly'"),
])
def test_bad_input_to_every_command_is_one_line_exit_2_and_touches_no_checkpoint(
        capsys, trained, argv, message):
    before = checkpoint_bytes(trained)
    args = [a.replace("W", str(trained)).replace("CONFIG", MLP) for a in argv.split()]
    code, err = error_of(capsys, *args)
    assert code == 2 and message in err, err
    assert checkpoint_bytes(trained) == before


@pytest.mark.parametrize("argv,message", [
    (["--config.epochs=3", "--config.checkpoint.keep=0", "--config.checkpoint.keep_best=0"],
     "config.checkpoint.keep=0 must be at least 1"),
    (["--config.dataset.batch_size=0"], "config.dataset.batch_size=0 must be at least 1"),
    (["--config.epochs=0"], "config.epochs=0 must be at least 1"),
    (["--workdir", "elsewhere"], "--workdir is given twice"),
])
def test_bad_input_on_a_trained_workdir_leaves_its_checkpoints_byte_identical(
        capsys, tmp_path, argv, message):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path)]) == 0
    before = checkpoint_bytes(tmp_path)
    capsys.readouterr()
    code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(tmp_path), *argv)
    assert code == 2 and message in err
    assert checkpoint_bytes(tmp_path) == before and before


def test_keeping_no_checkpoint_is_refused_from_python_too(tmp_path):
    from train import checkpoint
    with pytest.raises(ValueError, match="keep at least 1 latest checkpoint"):
        checkpoint.open_manager(str(tmp_path), keep=0)


@pytest.mark.parametrize("body,message", [
    ("def get_config(:\n", "bad.py:1: syntax error"),
    ("import ml_collections\n\ndef get_config():\n    return {}['x']\n",
     "bad.py:4: KeyError: 'x'"),
    ("def get_config():\n    return {'seed': 0}\n",
     "get_config() returned a dict, not an ml_collections.ConfigDict"),
    ("import sys\n\ndef get_config():\n    sys.exit(3)\n", "called sys.exit(3) instead of"),
    ("x = 1\n", "defines no get_config()"),
])
def test_a_config_file_that_fails_is_one_line_naming_file_and_line(capsys, tmp_path, body,
                                                                   message):
    config = tmp_path / "bad.py"
    config.write_text(body)
    code, err = error_of(capsys, "train", "--config", str(config), "--workdir",
                         str(tmp_path / "run"))
    assert code == 2 and message in err and str(config) in err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_torn_last_metrics_line_is_dropped_and_the_run_resumes(capsys, tmp_path):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path)]) == 0
    metrics = tmp_path / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 80, "epoch": 2.05, "train_lo')  # the disk filled up
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path), "--config.epochs=3"]) == 0
    assert f"dropped the unfinished last line of {metrics}" in capsys.readouterr().err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records[-1]["step"] == 117 and [r["step"] for r in records] == sorted(
        r["step"] for r in records)

    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:2] + ["not json"] + lines[2:]) + "\n")
    code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(tmp_path),
                         "--config.epochs=4")
    assert code == 2 and f"{metrics} line 3 is not JSON" in err


def test_missing_config_file(capsys, tmp_path):
    code, err = error_of(capsys, "train", "--config", "nope.py", "--workdir", str(tmp_path))
    assert code == 2 and "config file 'nope.py' does not exist" in err


def test_eval_without_checkpoints(capsys, tmp_path):
    code, err = error_of(capsys, "eval", "--workdir", str(tmp_path))
    assert code == 2 and "no checkpoints in" in err and "descent train" in err


def test_workdir_that_cannot_be_written(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(blocker / "run"))
    assert code == 2 and "cannot be written" in err


def test_unknown_command_and_missing_arguments(capsys):
    code, err = error_of(capsys, "fly")
    assert code == 2 and "invalid choice: 'fly'" in err
    code, err = error_of(capsys, "train", "--config", TINY)
    assert code == 2 and "--workdir" in err


def test_verbose_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        main(["train", "--config", TINY, "--workdir", str(tmp_path), "--verbose",
              "--config.model.name=resnet9"])
    assert not logging.getLogger("train").handlers  # the next command in this process is quiet


def test_descents_messages_reach_the_terminal_while_a_command_runs(capsys, monkeypatch):
    import experiments.config

    load = experiments.config.load_config

    def loading(path):  # a module of descent with something to say during a command
        log = logging.getLogger("experiments.config")
        log.debug("a detail")
        log.info("loading")
        log.warning("careful")
        return load(path)

    monkeypatch.setattr(experiments.config, "load_config", loading)
    assert main(["config", "show", TINY]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("loading\n") and err == "warning: careful\n" and "detail" not in out
    assert main(["--verbose", "config", "show", TINY]) == 0
    assert capsys.readouterr().out.startswith("a detail\nloading\n")
    assert not logging.getLogger("experiments").handlers  # only while the command ran


def test_failed_run_leaves_existing_checkpoints_untouched(capsys, tmp_path):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path)]) == 0
    snapshot = {os.path.join(r, n): os.path.getmtime(os.path.join(r, n))
                for r, _, names in os.walk(tmp_path / "checkpoints") for n in names}
    code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(tmp_path),
                         "--config.model.width=128")
    assert code == 2  # a different model cannot resume from these checkpoints
    assert "does not fit this model and optimizer" in err
    assert "params/hidden/1/kernel: checkpoint (64, 64) vs model (128, 128)" in err
    assert err.endswith(f"or another --workdir, with --config.init_from={tmp_path} to start "
                        f"from its weights")
    after = {os.path.join(r, n): os.path.getmtime(os.path.join(r, n))
             for r, _, names in os.walk(tmp_path / "checkpoints") for n in names}
    assert after == snapshot


def test_version_and_the_help_that_lists_every_shipped_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "descent 0.1.0"  # pyproject.toml's version

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    helped = capsys.readouterr().out
    shipped = sorted(f for f in os.listdir(os.path.dirname(MLP))
                     if f.endswith(".py") and f not in ("__init__.py", "common.py"))
    assert len(shipped) >= 9
    for name in shipped:  # every config, its variants, and the first sentence of its docstring
        assert f"  {name} [:" in helped, name
    assert "shakespeare_gpt.py [:cpu, :tiny]" in helped
    assert "A 2-hidden-layer ReLU MLP on scikit-learn's digits" in helped
    assert "descent config show FILE" in helped and "configs you trust" in helped


def test_config_show_prints_every_field_with_overrides_applied(capsys):
    assert main(["config", "show", TINY, "--config.model.width=7",
                 "--config.optimizer.name=sgd"]) == 0
    shown = capsys.readouterr().out
    assert "  width: 7\n" in shown and "  name: sgd\n" in shown and "epochs: 2\n" in shown
    assert "label_smoothing: 0.1" in shown  # a default from common.py, not set by the file
    code, err = error_of(capsys, "config", "show", TINY, "--config.model.wdith=7")
    assert code == 2 and "unknown config key 'config.model.wdith'" in err
    code, err = error_of(capsys, "eval", "--workdir", "w", "--config.model.width=7")
    assert code == 2 and "apply to `descent train`, `plan`, `config show` and `models --config`" in err


def test_models_counts_exactly_the_net_a_config_trains(capsys, tmp_path):
    assert main(["models", "--config", TINY, "--config.model.width=32"]) == 0
    counted = capsys.readouterr().out
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path),
                 "--config.model.width=32"]) == 0
    trained = capsys.readouterr().out
    number = counted.split()[0]
    assert counted.startswith(f"{number} parameters: mlp (") and "on digits" in counted
    assert f"training {number} parameters" in trained  # the listing: tests/test_zoo.py


def test_a_finished_run_says_so_and_how_to_extend_it(capsys, tmp_path):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    lines = first.strip().splitlines()
    assert lines[-1].startswith("best checkpoint: step 78; test accuracy ")
    assert lines[-1].endswith("(360 examples), loss " + lines[-1].rsplit(" ", 1)[1])

    assert main(["train", "--config", TINY, "--workdir", str(tmp_path)]) == 0
    again = capsys.readouterr().out
    assert ("this run is finished: its checkpoint at step 78 is the last of its 78 steps. To "
            "train it further, raise --config.epochs") in again
    assert "training " not in again
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path), "--config.epochs=3"]) == 0
    assert "training 8,970 parameters for 117 steps" in capsys.readouterr().out


def test_a_net_that_cannot_read_text_is_refused_on_a_text_dataset(capsys, tmp_path, prepared):
    code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(tmp_path),
                         "--config.dataset.name=tiny_shakespeare",
                         f"--config.dataset.data_dir={prepared}")
    assert code == 2
    assert "model.name=mlp reads images or feature vectors, but tiny_shakespeare is text" in err
    assert "use one of gpt, lstm, gru, rnn" in err


@pytest.mark.parametrize("override,message", [
    ("--config.model.remat=blocks", "unknown model.remat 'blocks'; known: none, block, "
                                    "checkpoint_dots"),
    ("--config.loss.chunk=7", "loss.chunk=7 does not divide the sequence of 32 positions; use a "
                              "divisor such as 8, or 0 for all at once"),
    ("--config.model.scan_layers=maybe", "config.model.scan_layers='maybe' is not a bool"),
])
def test_a_bad_language_model_lever_is_refused_before_the_workdir_is_made(
        capsys, tmp_path, prepared, override, message):
    code, err = error_of(capsys, "train", "--config", config_path("shakespeare_gpt.py") + ":tiny",
                         "--workdir", str(tmp_path / "run"), override,
                         f"--config.dataset.data_dir={prepared}")
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.dirname(MLP))
                                        if f.endswith(".py") and f not in ("__init__.py",
                                                                           "common.py")))
def test_every_config_takes_model_dtype_from_the_command_line(capsys, name):
    assert main(["config", "show", config_path(name), "--config.model.dtype=bfloat16"]) == 0
    assert "  dtype: bfloat16\n" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", TINY, "--workdir", "s3://bucket/run"],
     "workdir 's3://bucket/run': s3:// is not supported, since orbax writes a checkpoint's arrays "
     "to a file system or gs:// only; mount the bucket (mountpoint-s3)"),
    (["eval", "--workdir", "https://example.com/run"], "workdir 'https://example.com/run': "
     "descent works in gs:// buckets or on a file system only"),
    (["train", "--config", TINY, "--workdir", "run", "--config.dataset.name=image_folder",
      "--config.dataset.path=gs://bucket/photos"],
     "dataset.path 'gs://bucket/photos' is a URL: descent reads data from a file system, or a "
     "CSV table or .npz in a gs:// bucket; mount the bucket (gcsfuse for gs://, mountpoint-s3 "
     "for s3://)"),
    (["train", "--config", TINY, "--workdir", "run", "--config.dataset.name=csv",
      "--config.dataset.path=s3://bucket/table.csv"], "dataset.path 's3://bucket/table.csv' is "
     "a URL"),
])
def test_a_url_descent_cannot_work_in_is_refused_before_anything_is_written(
        capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # read as a local path, s3://bucket/run would be ./s3:/bucket/run
    code, err = error_of(capsys, *argv)
    assert code == 2 and message in err
    assert os.listdir(tmp_path) == []


def test_a_link_in_a_workdir_is_refused_never_written_through(capsys, tmp_path):
    workdir = tmp_path / "run"
    assert main(["train", "--config", TINY, "--workdir", str(workdir)]) == 0
    precious = tmp_path / "precious.txt"  # what a planted link points at: must survive
    precious.write_text("mine")
    for name in ("eval_test_78.json", "curves.png", "metrics.jsonl"):
        target = workdir / name
        target.unlink(missing_ok=True)
        target.symlink_to(precious)
        capsys.readouterr()
        for argv in (["eval"], ["train", "--config", TINY, "--config.epochs=3"]):
            code, err = error_of(capsys, *argv, "--workdir", str(workdir))
            assert code == 2 and f"{target} is a symbolic link" in err, err
        target.unlink()
    assert precious.read_text() == "mine"

    elsewhere = tmp_path / "elsewhere"  # a downloaded workdir whose checkpoints lead outside it
    elsewhere.mkdir()
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "checkpoints").symlink_to(elsewhere)
    capsys.readouterr()
    code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(planted))
    assert code == 2 and f"{planted / 'checkpoints'} is a symbolic link" in err
    assert os.listdir(elsewhere) == []


HOLDER = """
import sys, time, signal
from train import workdir_lock
with workdir_lock.hold(sys.argv[1], exclusive=sys.argv[2] == "train"):
    print("held", flush=True)
    time.sleep(300)
"""


def hold_in_another_process(workdir, how):
    """A real second process holding `workdir`'s lock as a trainer ("train") or a reader."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir), how], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_workdir_in_training_refuses_a_second_trainer_and_readers_naming_the_holder(
        capsys, tmp_path):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path)]) == 0
    before = checkpoint_bytes(tmp_path)
    holder = hold_in_another_process(tmp_path, "train")
    try:
        code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(tmp_path),
                             "--config.epochs=3")
        assert code == 2 and f"cannot train in {tmp_path}: it is in use by pid {holder.pid} on " \
                             f"{socket.gethostname()}, since " in err
        code, err = error_of(capsys, "eval", "--workdir", str(tmp_path))
        assert code == 2 and f"cannot read {tmp_path}: it is in use by pid {holder.pid}" in err
        assert checkpoint_bytes(tmp_path) == before
    finally:
        holder.kill()  # kill -9: the lock goes with the process, its note stays
        holder.wait()
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path), "--config.epochs=3"]) == 0
    assert (f"took over the lock of {tmp_path}, left by pid {holder.pid} on "
            f"{socket.gethostname()}") in capsys.readouterr().out


def test_readers_share_a_workdir_but_keep_a_trainer_out(capsys, tmp_path):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path)]) == 0
    reader = hold_in_another_process(tmp_path, "eval")
    try:
        assert main(["eval", "--workdir", str(tmp_path)]) == 0  # two readers at once
        code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(tmp_path),
                             "--config.epochs=3")
        assert code == 2 and "in use by another process evaluating or sampling from it" in err
    finally:
        reader.kill()
        reader.wait()


def test_eval_that_cannot_write_its_json_still_prints_the_metrics(capsys, trained):
    blocked = trained / "eval_validation_78.json"
    blocked.mkdir()  # the result's file name is taken by a directory: the write fails
    try:
        assert main(["eval", "--workdir", str(trained), "--split", "validation",
                     "--checkpoint", "78"]) == 2
        out, err = capsys.readouterr()
        assert out.startswith("checkpoint step 78: validation accuracy ")
        assert err.strip() == (f"warning: could not write {blocked} (Is a directory); the "
                               f"metrics above are all there is of them")
    finally:
        blocked.rmdir()


def test_resuming_under_another_config_is_refused_unless_allowed_and_then_recorded(
        capsys, tmp_path):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path)]) == 0
    before = checkpoint_bytes(tmp_path)
    code, err = error_of(capsys, "train", "--config", TINY, "--workdir", str(tmp_path),
                         "--config.epochs=3", "--config.optimizer.learning_rate=0.01",
                         "--config.model.dropout=0.5")
    assert code == 2 and checkpoint_bytes(tmp_path) == before
    assert ("the checkpoint at step 78 in " in err and "was trained with another config "
            "(model.dropout 0.2 -> 0.5, optimizer.learning_rate 0.003 -> 0.01)" in err
            and "--allow-config-change" in err)
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path), "--config.epochs=3",
                 "--config.optimizer.learning_rate=0.01", "--allow-config-change"]) == 0
    assert "config changed on resume at step 78: optimizer.learning_rate" in \
        capsys.readouterr().out
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(h["step"], h["changed"]) for h in history] == [
        (78, {"optimizer.learning_rate": [0.003, 0.01]})]
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path), "--config.epochs=4",
                 "--config.optimizer.learning_rate=0.01", "--config.parallel.mesh=data=2"]) == 0


def test_a_cnn_resumes_under_its_own_config(capsys, tmp_path):
    cnn = config_path("digits_cnn.py") + ":tiny"  # its channels are a tuple, saved as a list
    assert main(["train", "--config", cnn, "--workdir", str(tmp_path), "--config.epochs=1"]) == 0
    assert main(["train", "--config", cnn, "--workdir", str(tmp_path), "--config.epochs=2"]) == 0
    assert "resumed from the checkpoint at step 39" in capsys.readouterr().out


@pytest.mark.parametrize("line,chatter", [
    ("[Gloo] Rank 1 is connected to 7 peer ranks. Expected number of connected peer ranks is : 7\n",
     True),
    # two of gloo's threads writing at once, as seen in a launch-local run
    ("[Gloo] Rank 6 is connected to 7 peer ranks. [Gloo] Rank 7 is connected to 7 peer ranks. "
     "Expected number of connected peer ranks is : 7\n", True),
    ("Expected number of connected peer ranks is : 7\n", True),
    ("step     20 epoch   0.51  train loss 1.0881 acc 0.7156  validation loss 1.0063\n", False),
    ("best checkpoint: step 20; test accuracy 0.7889 (360 examples), loss 1.0028\n", False),
])
def test_launch_local_drops_gloos_lines_even_when_its_threads_interleave(line, chatter):
    from experiments.cli import gloo_chatter
    assert gloo_chatter(line) is chatter


@pytest.mark.parametrize("override,message", [
    ("--config.model.conv_impl=fast", "unknown conv_impl 'fast'; known: auto, xla, im2col"),
    ("--config.dataset.on_device=2", "config.dataset.on_device"),
])
def test_the_cnns_convolution_and_the_data_placement_are_checked_up_front(capsys, tmp_path,
                                                                          override, message):
    code, err = error_of(capsys, "train", "--config", config_path("digits_cnn.py") + ":tiny",
                         "--workdir", str(tmp_path), override)
    assert code == 2 and message in err, err
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_closed_event_loops_of_a_failed_save_print_no_tracebacks(capsys, monkeypatch):
    """A full disk: orbax's event loop is closed while the storage library's threads still
    hold writes for it; each then reports "Event loop is closed" as an exception nobody can
    catch. Here one such report comes from a finaliser, as it does from those threads."""
    import asyncio
    import sys

    class PendingWrite:
        def __init__(self):
            self.loop = asyncio.new_event_loop()
            self.loop.close()

        def __del__(self):
            self.loop.call_soon_threadsafe(print)  # RuntimeError: Event loop is closed

    def run(argv):
        PendingWrite()  # dropped at once: its error is unraisable
        print("descent: error: could not write a checkpoint", file=sys.stderr)
        return 1

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's, not pytest's
    hooks = sys.excepthook, sys.unraisablehook
    monkeypatch.setattr("experiments.cli._run", run)
    assert main(["train"]) == 1
    assert capsys.readouterr().err == "descent: error: could not write a checkpoint\n"
    assert (sys.excepthook, sys.unraisablehook) == hooks  # as they were


def test_compiled_programs_are_kept_in_the_cache_folder_the_config_names(tmp_path):
    """In processes JAX was given no cache folder, as a user's are: by default the cache is
    ~/.cache/descent/jax, `compile_cache` names another (a second run reads it back and writes
    nothing new), and '' keeps none anywhere."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XLA_FLAGS"] = xla_flags()

    def train(workdir, *option, home="home"):
        result = subprocess.run(
            [sys.executable, "-m", "experiments", "train", "--config", TINY, "--workdir",
             str(tmp_path / workdir), "--config.steps=3", *option], capture_output=True,
            text=True, cwd=ROOT, env={**env, "HOME": str(tmp_path / home)}, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]

    train("default")
    assert any(n.startswith("jit_") for n in os.listdir(tmp_path / "home/.cache/descent/jax"))
    cache = tmp_path / "cache"
    train("first", f"--config.compile_cache={cache}", home="home2")
    kept = sorted(os.listdir(cache))
    assert any(name.startswith("jit_") for name in kept), kept
    train("second", f"--config.compile_cache={cache}", home="home2")
    assert sorted(os.listdir(cache)) == kept  # the same programs, read back
    train("off", "--config.compile_cache=", home="home2")
    assert sorted(os.listdir(cache)) == kept
    assert not (tmp_path / "home2" / ".cache" / "descent").exists()
