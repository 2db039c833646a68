"""Configs: one home for defaults and ranges, a model group made from the net's constructor,
and overrides parsed by ml_collections' config_flags."""
import json
import os

import pytest

import data
import nets
from experiments.cli import main
from experiments.config import check_values, complete, load_config, override
from experiments.configs.common import DEFAULTS, MODEL_RANGES, base_config

from conftest import CONFIGS, config_path

MLP = config_path("digits_mlp.py")
SHIPPED = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py")
                 and f not in ("__init__.py", "common.py"))


def every_shipped_config():
    """(file:variant, config) for every shipped config file and each of its variants."""
    for name in SHIPPED:
        path = os.path.join(CONFIGS, name)
        for variant in ("",) + _variants(path):
            yield f"{name}:{variant}", load_config(path + (f":{variant}" if variant else ""))


def _variants(path) -> tuple[str, ...]:
    import ast
    tree = ast.parse(open(path).read())
    return next((ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and node.targets[0].id == "VARIANTS"), ())


def flat(config, prefix="") -> dict:
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_the_base_config_is_the_defaults_table():
    assert flat(base_config()) == {key: default for key, default, _ in DEFAULTS}


def test_every_shipped_config_builds_on_the_base_and_its_nets_constructor():
    base = flat(base_config())
    for where, config in every_shipped_config():
        keys = flat(config)
        takes = data.options(config.dataset.name)  # a dataset's own options may be added
        added = {k for k in keys if k not in base and not k.startswith("model.")}
        assert all(k.split(".", 1)[1] in takes for k in added), (where, added)
        model = {k.split(".", 1)[1] for k in keys if k.startswith("model.")}
        assert model == {"name", *nets.fields(config.model.name)}, where
        check_values(config)  # and its values are ones a run can use


def test_any_config_can_set_any_field_of_its_net():
    config, keys, rest = override(load_config(MLP), ["--config.model.init=he"])
    assert config.model.init == "he" and keys == ["model.init"] and rest == []
    assert config.model.width == 512 and config.model.dropout == 0.2  # the file's own values
    assert load_config(MLP).model.init == nets.fields("mlp")["init"]  # the constructor's
    assert main(["models", "--config", MLP, "--config.model.init=he"]) == 0  # and it builds


def test_models_counts_the_net_a_switched_config_trains(capsys):
    assert main(["models", "--config", MLP, "--config.model.name=cnn"]) == 0
    counted = capsys.readouterr().out
    assert "parameters: cnn (" in counted and "channels=(32, 64)" in counted
    assert "depth=" not in counted and "width=" not in counted


def test_switching_the_net_brings_its_fields_and_drops_the_old_ones():
    file = load_config(MLP + ":tiny")
    config, _, _ = override(file, ["--config.model.name=cnn", "--config.model.channels=4,8"])
    assert set(config.model) == {"name", *nets.fields("cnn")}
    assert "depth" not in config.model and "width" not in config.model
    assert config.model.channels == (4, 8)
    cnn = nets.fields("cnn")  # another net starts from its own defaults, not the MLP's values
    assert file.model.dropout != cnn["dropout"] and config.model.dropout == cnn["dropout"]
    assert config.model.kernel_size == cnn["kernel_size"]


def test_switching_to_a_variant_of_the_same_net_keeps_the_configs_values():
    lstm = load_config(config_path("shakespeare_lstm.py"))
    gru, _, _ = override(lstm, ["--config.model.name=gru"])  # the cell changes, nothing else
    assert gru.model.to_dict() == {**lstm.model.to_dict(), "name": "gru"}


def test_a_field_the_chosen_net_lacks_is_refused_naming_its_fields():
    with pytest.raises(ValueError, match="model 'mlp' has no field 'channels'; its fields: "
                                         "activation, bias_init, depth, dropout, dtype, init, name, "
                                         "width"):
        override(load_config(MLP), ["--config.model.channels=4,8"])
    with pytest.raises(ValueError, match="model 'cnn' has no field 'width'"):  # set too early
        override(load_config(MLP), ["--config.model.width=7", "--config.model.name=cnn"])


def test_a_config_file_that_sets_a_field_its_net_lacks_is_refused(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from experiments.configs.common import base_config\n\n"
                    "def get_config():\n    c = base_config()\n    c.dataset.name = 'digits'\n"
                    "    c.model.name = 'mlp'\n    c.model.widht = 32\n    return c\n")
    with pytest.raises(ValueError, match=f"config file {path}: model 'mlp' has no field"
                                         r"\(s\) widht; its fields: depth, width"):
        load_config(str(path))


def test_a_switched_config_trains_end_to_end(capsys, tmp_path):
    workdir = tmp_path / "cnn"
    assert main(["train", "--config", MLP + ":tiny", "--workdir", str(workdir),
                 "--config.model.name=cnn", "--config.model.channels=4,8",
                 "--config.model.dense", "16", "--config.epochs=1"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    step = max(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    saved = json.load(open(workdir / "checkpoints" / str(step) / "config" / "metadata"))
    assert saved["model"]["name"] == "cnn" and saved["model"]["channels"] == [4, 8]
    assert "depth" not in saved["model"]


@pytest.mark.parametrize("args,field,value", [
    (["--config.optimizer.learning_rate=1"], "optimizer.learning_rate", 1.0),  # int -> float
    (["--config.epochs", "3"], "epochs", 3),                                   # space form
    (["--config.log.tensorboard=false"], "log.tensorboard", False),
    (["--noconfig.log.tensorboard"], "log.tensorboard", False),
    (["--config.parallel.mesh=data=2"], "parallel.mesh", "data=2"),
    (["--config.model.width=7"], "model.width", 7),
])
def test_overrides_are_typed_as_their_defaults(args, field, value):
    config, keys, _ = override(load_config(MLP), args)
    got = config
    for name in field.split("."):
        got = got[name]
    assert got == value and type(got) is type(value) and keys == [field]


def test_tuples_are_written_with_commas_or_given_once_per_element():
    cnn = load_config(config_path("digits_cnn.py"))
    for args in (["--config.model.channels=4,8"], ["--config.model.channels=(4, 8)"],
                 ["--config.model.channels", "4", "--config.model.channels", "8"]):
        assert override(cnn, args)[0].model.channels == (4, 8), args


@pytest.mark.parametrize("args,message", [
    (["--config.epochs=three"], "config.epochs='three' is not an int (the default is 40)"),
    (["--config.log.tensorboard=maybe"], "is not a bool (the default is True); write true or "
                                         "false"),
    (["--config.optimzer.name=adam"], "unknown config key 'config.optimzer.name'; keys of "
                                      "config: checkpoint, compile_cache, dataset"),
    (["--config.optimizer.nmae=adam"], "unknown config key 'config.optimizer.nmae'; keys of "
                                       "config.optimizer: accumulate_steps"),
    (["--config.epochs=3", "--config.epochs=4"], "--config.epochs is given 2 times; give it "
                                                 "once"),
    (["--config.optimizer=3"], "config.optimizer is a group; set one of its keys: "),
    (["--config.epochs"], "--config.epochs needs a value: --config.epochs=VALUE"),
    (["--config.model.name=resnet9"], "unknown model 'resnet9'; known: bert, cnn"),
    (["--config.model.name=cnn", "--config.model.channels=a,b"],
     "config.model.channels=('a,b',) is not a tuple of int (the default is (32, 64)); write "
     "e.g. 32,64"),
    (["--config.model.name=cnn", "--config.model.channels=8,1.5"], "is not a tuple of int"),
    (["--config.", "1"], "an override is --config.KEY=VALUE, KEY a dotted path"),
])
def test_bad_overrides_are_one_readable_line(args, message):
    with pytest.raises(ValueError) as error:
        override(load_config(MLP), args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_other_arguments_are_handed_back_in_order():
    _, keys, rest = override(load_config(MLP), ["--workdir", "w", "--config.seed=3", "x"])
    assert keys == ["seed"] and rest == ["--workdir", "w", "x"]


def test_overrides_leave_the_given_config_alone_and_lock_the_result():
    file = load_config(MLP)
    config, _, _ = override(file, ["--config.seed=3"])
    assert file.seed == 0 and config.seed == 3
    with pytest.raises(AttributeError):
        config.optimizer.learnig_rate = 0.1  # a key that does not exist cannot appear


# Every value range, each with a value just outside it and one at its edge that a run can use.
RANGES = [
    ("seed", -1, 0), ("dataset.split_seed", -1, 0),
    ("dataset.batch_size", 0, 1), ("dataset.eval_batch_size", 0, 1),
    ("dataset.train_examples", -1, 0), ("dataset.image_size", -1, 0),
    ("dataset.max_in_memory_mb", -1, 0), ("dataset.validation_fraction", 1.0, 0.0),
    ("dataset.test_fraction", -0.1, 0.0), ("optimizer.learning_rate", 0.0, 1e-9),
    ("optimizer.momentum", 1.0, 0.0), ("optimizer.weight_decay", -0.1, 0.0),
    ("optimizer.warmup_steps", -1, 0), ("optimizer.warmup_epochs", -0.5, 0.0),
    ("optimizer.reference_batch_size", -1, 0), ("optimizer.decay_every", -1, 0),
    ("optimizer.decay_factor", 0.0, 0.5), ("optimizer.clip_norm", -1.0, 0.0),
    ("optimizer.accumulate_steps", 0, 1), ("optimizer.ema_decay", 1.0, 0.0),
    ("loss.label_smoothing", 1.0, 0.0), ("loss.chunk", -1, 0), ("steps", -1, 0),
    ("eval_every", -1, 0),
    ("log_every", 0, 1), ("profile.start_step", -1, 0), ("profile.num_steps", 0, 1),
    ("early_stopping.patience", -1, 0), ("checkpoint.every", -1, 0),
    ("checkpoint.keep", 0, 1), ("checkpoint.keep_best", -1, 0),
    ("model.dropout", 1.0, 0.0), ("model.dropout", -0.1, 0.0),
]


def test_every_range_in_the_defaults_has_a_row_here():
    ranged = {key for key, _, allowed in DEFAULTS if allowed is not None}
    ranged |= {f"model.{field}" for field in MODEL_RANGES}
    assert ranged == {key for key, _, _ in RANGES}


@pytest.mark.parametrize("key,refused,allowed", RANGES)
def test_a_value_outside_its_range_is_refused(key, refused, allowed):
    config = load_config(MLP)
    *groups, leaf = key.split(".")
    node = config
    for group in groups:
        node = node[group]
    node[leaf] = allowed
    check_values(config)
    node[leaf] = refused
    with pytest.raises(ValueError, match=rf"^config\.{key}={refused} must be "):
        check_values(config)


def test_epochs_must_be_at_least_1_unless_steps_are_set():
    config = load_config(MLP)
    config.epochs = 0
    with pytest.raises(ValueError, match="config.epochs=0 must be at least 1 "
                                         r"\(or set config.steps\)"):
        check_values(config)
    config.steps = 10
    check_values(config)


@pytest.mark.parametrize("name", ["digits_mlp.py", "digits_cnn.py"])
def test_a_config_saved_before_a_field_existed_is_completed_from_the_defaults(name):
    config = load_config(config_path(name) + ":tiny")
    saved = json.loads(json.dumps(config.to_dict()))  # as a checkpoint stores it
    del saved["model"]["init"], saved["optimizer"]["ema_decay"], saved["profile"]
    restored = complete(saved)
    assert restored == config and restored.model.init == nets.fields(config.model.name)["init"]
    assert complete(config.to_dict()) == config


def _set(config, key, value):
    *groups, leaf = key.split(".")
    node = config
    for group in groups:
        node = node[group]
    with node.ignore_type():
        node[leaf] = value


# Non-finite numbers compare false with every bound, so a range check alone lets them through.
@pytest.mark.parametrize("key", ["optimizer.learning_rate", "model.dropout",
                                 "optimizer.warmup_epochs", "loss.label_smoothing"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_number_that_is_not_finite_is_refused_wherever_it_is(key, value):
    config = load_config(MLP)
    _set(config, key, value)
    with pytest.raises(ValueError, match=rf"^config\.{key}={value} is not a finite number"):
        check_values(config)


@pytest.mark.parametrize("key", ["steps", "epochs", "seed", "model.width", "eval_every"])
def test_an_integer_past_32_bits_is_refused_with_the_reason(key):
    config = load_config(MLP)
    _set(config, key, 2**31 - 1)  # the largest JAX's 32-bit step counter and seeds hold
    if key != "model.width":  # a net that wide is refused by the net itself, later
        check_values(config)
    _set(config, key, 2**31)
    with pytest.raises(ValueError, match=rf"^config\.{key}=2147483648 is too large: .* 2\*\*31"):
        check_values(config)


def test_a_tuple_of_numbers_is_checked_element_by_element():
    config = load_config(config_path("digits_cnn.py") + ":tiny")
    _set(config, "model.features", (8, 2**40))
    with pytest.raises(ValueError, match=r"^config\.model\.features=1099511627776 is too"):
        check_values(config)


def test_configs_that_misbehave_are_refused_as_one_line(tmp_path):
    bodies = {
        "raise KeyboardInterrupt": "raised KeyboardInterrupt",
        "import os; os._exit(0)": "called os._exit(0) instead of returning a config",
        "import ml_collections; return ml_collections.ConfigDict({'model': {'name': 'mlp'}})":
            "returned a config without seed, dataset.name",
    }
    for body, said in bodies.items():
        path = tmp_path / "bad.py"
        path.write_text(f"def get_config():\n    {body}\n")
        with pytest.raises(ValueError) as error:
            load_config(str(path))
        assert said in str(error.value) and "\n" not in str(error.value), str(error.value)
