"""The fuzz table's rows for values: every numeric field of a config crossed with the kinds of
value no run can use (NaN, infinities, out of its range, past 32 bits), the model's fields,
the text fields left empty, `--sweep`, `--seeds`, every numeric option of the other commands,
and config files that misbehave. Each is refused in one line naming the field or option,
before a work directory is made (or, on a trained one, with its checkpoints untouched)."""
import os

import pytest

from fuzz import TINY, Case, check, make_places, trained_workdir  # noqa: F401

from experiments.configs.common import DEFAULTS

TOO_LARGE = 2**31  # past JAX's 32-bit step counter and seeds


def train(name, *args, names=(), plant=None, config=TINY):
    return Case(name, ["train", "--config", config, "--workdir", "{workdir}", *args], names,
                plant=plant)


def _field_rows() -> list[Case]:
    """For each numeric field of the defaults: NaN and both infinities where it is a float,
    a value past 32 bits where it is an integer, and the value just outside its range."""
    rows = []
    for key, default, allowed in DEFAULTS:
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if isinstance(default, float):
            for text, shown in (("nan", "nan"), ("inf", "inf"), ("-inf", "-inf")):
                rows.append(train(f"{key}={text}", f"--config.{key}={text}",
                                  names=[f"config.{key}={shown} is not a finite number"]))
        else:
            rows.append(train(f"{key} past 32 bits", f"--config.{key}={TOO_LARGE}",
                              names=[f"config.{key}={TOO_LARGE} is too large", "2**31"]))
        if allowed is not None:
            below = allowed.low - (1 if isinstance(default, int) else 0.5)
            if not allowed.low_allowed:
                below = allowed.low
            rows.append(train(f"{key} below its range", f"--config.{key}={below}",
                              names=[f"config.{key}=", "must be"]))
    return rows


MODEL_ROWS = [
    train("model.dropout=nan", "--config.model.dropout=nan",
          names=["config.model.dropout=nan is not a finite number"]),
    train("model.dropout=1e999", "--config.model.dropout=1e999",
          names=["config.model.dropout=inf is not a finite number"]),
    train("model.dropout=1", "--config.model.dropout=1", names=["must be at least 0 and below 1"]),
    train("model.depth=-1", "--config.model.depth=-1", names=["model.depth >= 0"]),
    train("model.width=0", "--config.model.width=0", names=["model.width >= 1"]),
    train("model.width past 32 bits", f"--config.model.width={TOO_LARGE}",
          names=["config.model.width=2147483648 is too large"]),
    train("model.width=1.5", "--config.model.width=1.5", names=["config.model.width='1.5' is "
                                                                 "not an int"]),
    train("model.activation empty", "--config.model.activation=",
          names=["unknown activation ''"]),
    train("model.init unknown", "--config.model.init=zeros", names=["'zeros'", "lecun"]),
    train("model.bias_init unknown", "--config.model.bias_init=torch",
          names=["unknown bias_init 'torch'", "zeros, uniform"]),
    train("model.chrono=1", "--config.model.name=lstm", "--config.model.chrono=1",
          names=["model.chrono=1 spans no steps", "T_max of 2 or more"]),
    train("model.chrono on a GRU", "--config.model.name=gru", "--config.model.chrono=20",
          names=["model.chrono applies to the lstm cell, not to 'gru'"]),
    train("model.dtype unknown", "--config.model.dtype=float8", names=["float8", "float32"]),
    train("model.name unknown", "--config.model.name=resnet9", names=["unknown model 'resnet9'"]),
    train("model.name empty", "--config.model.name=", names=["unknown model ''"]),
    train("model field of another net", "--config.model.features=8,16",
          names=["model 'mlp' has no field 'features'"]),
    Case("models with an unknown net", ["models", "--config", TINY, "--config.model.name=nope"],
         ["unknown model 'nope'"]),
    Case("models with a dropout of nan", ["models", "--config", TINY,
                                          "--config.model.dropout=nan"],
         ["config.model.dropout=nan is not a finite number"]),
]

CNN = TINY.replace("digits_mlp", "digits_cnn")

# Sizes of the other nets that their constructors let through to flax, where a 0 divided by
# zero and a negative count reached math.sqrt: named as the field instead.
NET_ROWS = [
    train(f"{net} {field}={value}", *([f"--config.model.name={net}"] if net != "cnn" else []),
          f"--config.model.{field}={value}", config=CNN if net == "cnn" else TINY,
          names=[f"model.{field}={shown} is not a size {net} can take"])
    for net, field, value, shown in (
        ("cnn", "channels", "0,8", "(0, 8)"), ("cnn", "kernel_size", "0", "0"),
        ("cnn", "dense", "-1", "-1"), ("bert", "heads", "0", "0"), ("bert", "width", "0", "0"),
        ("bert", "layers", "-1", "-1"), ("lstm", "hidden", "0", "0"),
        ("resnet18", "width", "0", "0"))
] + [
    train("speednet bn_momentum=nan", "--config.model.name=speednet",
          "--config.model.bn_momentum=nan", names=["config.model.bn_momentum=nan is not a "
                                                   "finite number"]),
    train("gpt dropout=inf", "--config.model.name=gpt", "--config.model.dropout=inf",
          names=["config.model.dropout=inf is not a finite number"]),
]

TEXT_ROWS = [
    train(f"{key} empty", f"--config.{key}=", names=[said])
    for key, said in (("optimizer.name", "unknown optimizer ''"),
                      ("optimizer.schedule", "unknown schedule ''"),
                      ("loss.name", "unknown loss ''"),
                      ("dataset.name", "unknown dataset ''"),
                      ("parallel.strategy", "unknown parallel.strategy ''"),
                      ("parallel.mesh", "parallel.mesh=''"),
                      ("early_stopping.monitor", "early_stopping.monitor=''"),
                      ("eval_split", "config.eval_split is empty"))
] + [
    train("epochs as a float", "--config.epochs=1e20", names=["config.epochs='1e20' is not an "
                                                              "int"]),
    train("steps as a float", "--config.steps=1e20", names=["config.steps='1e20' is not an "
                                                            "int"]),
    train("steps as text", "--config.steps=many", names=["config.steps='many' is not an int"]),
    train("learning rate as text", "--config.optimizer.learning_rate=fast",
          names=["config.optimizer.learning_rate='fast' is not a float"]),
    train("a boolean as a number", "--config.log.tensorboard=2",
          names=["config.log.tensorboard='2' is not a bool"]),
    train("clip_norm past float32", "--config.optimizer.clip_norm=1e300",
          names=["config.optimizer.clip_norm=1e+300 is past the largest float32"]),
    train("learning rate past float32", "--config.optimizer.learning_rate=1e39",
          names=["config.optimizer.learning_rate=1e+39 is past the largest float32"]),
    train("steps astronomically large", "--config.steps=100000000000000000000",
          names=["config.steps=100000000000000000000 is too large"]),
]


# Values that only the dataset, the devices or the net can judge: still refused before the work
# directory and its lock are made.
LATE_ROWS = [
    train(f"{override.split('=', 1)[0][9:]} that cannot work", override, names=[said])
    for override, said in (
        ("--config.parallel.mesh=data=16", "needs 16 devices but 8 cpu devices were found"),
        ("--config.parallel.mesh=model=8", "names an unknown axis 'model'; the axes are data"),
        ("--config.dataset.batch_size=30", "use 24 or 32"),
        ("--config.optimizer.accumulate_steps=3", "micro-batches that divide over 8 devices"),
        ("--config.profile.start_step=500", "profile.start_step=500 is after the run's last"),
        ("--config.early_stopping.monitor=accuracy", "is not one of eval_accuracy, eval_loss"),
        ("--config.eval_split=nope", "digits has no split 'nope'"),
        ("--config.test_split=nope", "digits has no split 'nope'"),
        ("--config.dataset.train_examples=100000", "dataset.train_examples=100000 must be"),
        ("--config.dataset.image_size=32", "dataset 'digits' takes no option 'image_size'"),
        ("--config.dataset.standardize=false", "dataset 'digits' takes no option 'standardize'"),
    )
] + [
    train("dataset.context of 0", "--config.dataset.context=0",
          config=TINY.replace("digits_mlp", "shakespeare_lstm"),
          names=["dataset.context=0 must be at least 1"]),
]


def _config_file(body: str):
    def plant(places):
        with open(os.path.join(places.tmp, "c.py"), "w") as f:
            f.write(body)
    return plant


def config_row(name, body, names):
    return train(f"config file {name}", config="{tmp}/c.py", names=["{tmp}/c.py", *names],
                 plant=_config_file(body))


CONFIG_FILE_ROWS = [
    config_row("raising KeyboardInterrupt", "def get_config():\n    raise KeyboardInterrupt\n",
               [":2: raised KeyboardInterrupt"]),
    config_row("calling os._exit(0)", "import os\ndef get_config():\n    os._exit(0)\n",
               ["called os._exit(0) instead of returning a config"]),
    config_row("calling sys.exit(3)", "import sys\ndef get_config():\n    sys.exit(3)\n",
               ["called sys.exit(3)"]),
    config_row("without a dataset", "import ml_collections\ndef get_config():\n    return "
               "ml_collections.ConfigDict({'model': {'name': 'mlp'}})\n",
               ["without seed, dataset.name", "base_config()"]),
    config_row("without get_config", "x = 1\n", ["defines no get_config()"]),
    config_row("returning a dict", "def get_config():\n    return {}\n",
               ["returned a dict, not an ml_collections.ConfigDict"]),
    config_row("with a syntax error", "def get_config(:\n", [":1: syntax error"]),
    config_row("raising at import", "1 / 0\n", [":1: ZeroDivisionError"]),
    train("config file setting a NaN learning rate", config="{tmp}/c.py", plant=_config_file(
        "from experiments.configs.common import base_config\ndef get_config():\n"
        "    c = base_config()\n    c.dataset.name, c.model.name = 'digits', 'mlp'\n"
        "    c.optimizer.learning_rate = float('nan')\n    return c\n"),
        names=["config.optimizer.learning_rate=nan is not a finite number"]),
    train("config file naming no dataset", config="{tmp}/c.py", plant=_config_file(
        "from experiments.configs.common import base_config\ndef get_config():\n"
        "    c = base_config()\n    c.model.name = 'mlp'\n    return c\n"),
        names=["unknown dataset ''"]),
    train("unknown variant", config=TINY.replace(":tiny", ":huge"),
          names=["unknown config variant 'huge'"]),
]

SWEEP_ROWS = [
    train(f"--sweep {values}", "--sweep", f"optimizer.learning_rate={values}", names=[said])
    for values, said in (("0.1,inf", "finite numbers above 0"), ("nan", "finite numbers above"),
                         ("-inf", "finite numbers above 0"), ("0.1,0", "above 0, each once"),
                         ("0.1,-0.1", "above 0, each once"), ("0.1,0.1", "each once"),
                         ("fast", "the values are not numbers"), ("", "not numbers"))
] + [
    train("--sweep of another key", "--sweep", "optimizer.momentum=0.5,0.9",
          names=["sweep optimizer.learning_rate"]),
    train("--sweep and the same override", "--sweep", "optimizer.learning_rate=0.1,0.2",
          "--config.optimizer.learning_rate=0.3", names=["give it once"]),
]

SEEDS_ROWS = [
    train(f"--seeds {seeds}", "--seeds", seeds, names=[said])
    for seeds, said in (("-1", "is not a seed or a range"), ("3-1", "from a lower to a higher"),
                        ("x", "'x' is not a seed"), ("1,1", "names seed 1 more than once"),
                        ("0-65534,7", "names seed 7 more than once"),
                        ("0-99999999999", "names more than 65,536 runs"),
                        ("2147483648", "config.seed=2147483648 is too large"), ("", "is not a"))
] + [
    train("--seeds and --config.seed", "--seeds", "0-1", "--config.seed=3",
          names=["--seeds sets the seed, which --config.seed sets too"]),
]

OPTION_ROWS = [
    Case(f"{command} {option} {value}", [command, "--workdir", "{workdir}", *more, option,
                                         value], [said])
    for command, more, option, value, said in (
        ("sample", ["--prompt", "x"], "--length", "0", "--length 0 must be from 1"),
        ("sample", ["--prompt", "x"], "--length", "2147483648", "--length 2147483648 must be"),
        ("sample", ["--prompt", "x"], "--temperature", "nan", "--temperature nan must be a "
                                                            "finite number"),
        ("sample", ["--prompt", "x"], "--temperature", "inf", "--temperature inf must be"),
        ("sample", ["--prompt", "x"], "--temperature", "-0.5", "--temperature -0.5 must be"),
        ("sample", ["--prompt", "x"], "--seed", "-1", "--seed -1 must be from 0"),
        ("sample", ["--prompt", "x"], "--seed", "4294967296", "--seed 4294967296 must be"),
        ("sample", ["--prompt", "x"], "--length", "many", "argument --length: invalid int"),
        ("sample", ["--prompt", "x"], "--top-p", "0", "--top-p 0.0 must be above 0 and at most 1"),
        ("sample", ["--prompt", "x"], "--top-p", "1.5", "--top-p 1.5 must be above 0"),
        ("sample", ["--prompt", "x"], "--top-p", "nan", "--top-p nan must be above 0"),
        ("sample", ["--prompt", "x"], "--top-k", "-1", "--top-k -1 must be from 0"),
        ("predict", ["x.png"], "--top-k", "0", "--top-k 0 must be from 1"),
        ("predict", ["x.png"], "--top-k", "-5", "--top-k -5 must be from 1"),
        ("eval", [], "--coordinator-timeout", "0", "--coordinator-timeout 0 must be from 1"),
        ("eval", ["--coordinator", "127.0.0.1:1", "--process-id", "0"], "--num-processes", "0",
         "--num-processes 0 must be from 1"),
        ("eval", ["--coordinator", "127.0.0.1:1", "--num-processes", "2"], "--process-id", "-1",
         "--process-id -1 must be from 0"),
    )
] + [
    Case("study --seeds 0", ["study", "activations", "--seeds", "0"],
         ["--seeds 0 must be from 1"]),
    Case("launch-local --num-processes 0", ["launch-local", "--num-processes", "0", "--",
                                            "train"], ["--num-processes must be from 1 to 64"]),
    Case("launch-local --num-processes 100000", ["launch-local", "--num-processes", "100000",
                                                 "--", "train"], ["got 100000 and 4"]),
    Case("launch-local --devices-per-process 0", ["launch-local", "--num-processes", "2",
                                                  "--devices-per-process", "0", "--", "train"],
         ["got 2 and 0"]),
    Case("launch-local --devices-per-process huge", ["launch-local", "--num-processes", "2",
                                                     "--devices-per-process", "99999999", "--",
                                                     "train"], ["got 2 and 99999999"]),
]

# The same refusals on a work directory that holds checkpoints: they stay as they were.
ON_TRAINED_ROWS = [
    train("trained: learning rate nan", "--config.optimizer.learning_rate=nan",
          names=["config.optimizer.learning_rate=nan is not a finite number"]),
    train("trained: steps past 32 bits", f"--config.steps={TOO_LARGE}",
          names=["config.steps=2147483648 is too large"]),
    train("trained: --sweep inf", "--sweep", "optimizer.learning_rate=inf",
          names=["finite numbers above 0"]),
    train("trained: seed -1", "--config.seed=-1", names=["config.seed=-1 must be at least 0"]),
]

ROWS = (_field_rows() + MODEL_ROWS + NET_ROWS + TEXT_ROWS + LATE_ROWS + CONFIG_FILE_ROWS
        + SWEEP_ROWS + SEEDS_ROWS + OPTION_ROWS + ON_TRAINED_ROWS)


@pytest.mark.parametrize("case", ROWS, ids=str)
def test_a_bad_value_is_refused_in_one_line_before_any_work(case, tmp_path, request):
    trained = request.getfixturevalue("trained_workdir") if case in ON_TRAINED_ROWS else None
    places = make_places(tmp_path, trained)
    check(case, places)
    if trained is None:  # refused before the work directory (or its lock) was made
        assert not os.path.exists(places.workdir)
