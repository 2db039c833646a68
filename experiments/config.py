"""Configs: Python files whose `get_config()` returns an ml_collections.ConfigDict.

Defaults and the values a run can use live in one table, `experiments.configs.common.DEFAULTS`;
the `model` group holds the chosen net's constructor fields (`nets.fields`). Command-line
overrides (`--config.optimizer.name=adamw`) are applied by ml_collections' own `config_flags`:
typed as the field's default, unknown keys refused. Every error here is a ValueError whose
message names the fix.
"""
import contextlib
import copy
import importlib.util
import math
import os
import re
import traceback
from collections.abc import Mapping, Sequence

import ml_collections

import nets
from experiments.configs.common import DEFAULTS, INT_LIMIT, MODEL_RANGES, base_config
from train.storage import URL

FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max, without importing numpy


def load_config(path: str) -> ml_collections.ConfigDict:
    """Runs the config file at `path` and returns its `get_config()`, its `model` group holding
    every field of its net (`model_fields`).

    `path:variant` passes `variant` to `get_config` (e.g. `digits_mlp.py:tiny`).
    """
    variant = ""
    if not os.path.isfile(path) and ":" in path:
        path, variant = path.rsplit(":", 1)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist; "
                                f"see experiments/configs/ for examples")
    spec = importlib.util.spec_from_file_location("descent_config", path)
    module = importlib.util.module_from_spec(spec)
    try:  # a config file is code: whatever it does wrong is named by file and line
        with _no_hard_exit():
            spec.loader.exec_module(module)
            if not hasattr(module, "get_config"):
                raise ValueError(f"config file {path!r} defines no get_config()")
            config = module.get_config(variant) if variant else module.get_config()
    except ValueError:  # our own messages (an unknown variant) and the one above: as they are
        raise
    except SyntaxError as e:
        raise ValueError(f"config file {path}:{e.lineno}: syntax error: {e.msg}") from e
    except SystemExit as e:
        how = "os._exit" if isinstance(e, _HardExit) else "sys.exit"
        raise ValueError(f"config file {path} called {how}({e.code!r}) instead of returning "
                         f"a config") from None
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - traceback under --verbose
        line = next((frame.lineno for frame in reversed(traceback.extract_tb(e.__traceback__))
                     if os.path.abspath(frame.filename) == os.path.abspath(path)), "?")
        said = f"{type(e).__name__}: {e}" if str(e) else f"raised {type(e).__name__}"
        raise ValueError(f"config file {path}:{line}: {said}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config file {path}: get_config() returned a {type(config).__name__}, "
                         f"not an ml_collections.ConfigDict")
    missing = [key for key, _, _ in DEFAULTS if not _has(config, key)]
    if missing:
        raise ValueError(f"config file {path}: get_config() returned a config without "
                         f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}; start "
                         f"it from experiments.configs.common.base_config(), which has every "
                         f"field")
    try:
        config.model = model_fields(config.model.name, config.model)
    except ValueError as e:
        raise ValueError(f"config file {path}: {e}") from None
    return config


class _HardExit(SystemExit):
    pass


@contextlib.contextmanager
def _no_hard_exit():
    """os._exit, called by a config file, would end descent at once with its code (0: success,
    silently); while the file runs it raises instead, so that it is reported like sys.exit."""
    def refuse(code):
        raise _HardExit(code)

    hard_exit, os._exit = os._exit, refuse
    try:
        yield
    finally:
        os._exit = hard_exit


def _has(config: ml_collections.ConfigDict, key: str) -> bool:
    node = config
    for name in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            return False
        node = node[name]
    return True


def model_fields(name: str, given: Mapping = ()) -> ml_collections.ConfigDict:
    """The `model` group for net `name`: `name`, then every field its constructor takes, at its
    default unless `given` sets it. A field in `given` that the net does not take is an error
    naming the fields it does take."""
    defaults = nets.fields(name)
    given = dict(given)
    unknown = sorted(set(given) - set(defaults) - {"name"})
    if unknown:
        raise ValueError(f"model {name!r} has no field(s) {', '.join(unknown)}; its fields: "
                         f"{', '.join(defaults)}")
    group = ml_collections.ConfigDict({"name": name, **defaults})
    for key, value in given.items():
        if key == "name":
            continue
        try:
            group[key] = value
        except TypeError:
            raise ValueError(f"model.{key}={value!r} is not {_a(type(defaults[key]))} (the "
                             f"default of model {name!r} is {defaults[key]!r})") from None
    return group


def complete(saved: Mapping) -> ml_collections.ConfigDict:
    """A config saved with a checkpoint (a dict, as read back from JSON), with every field that
    did not exist when it was saved filled in from today's defaults: what restoring, resuming
    and comparing configs should see. Tuples, which JSON stores as lists, are tuples again;
    fields the defaults no longer know are kept as saved."""
    config = base_config()
    model = dict(saved.get("model", {}))
    if model.get("name"):
        config.model = model_fields(model["name"], {k: v for k, v in model.items()
                                                    if k in nets.fields(model["name"])})
    _overlay(config, saved)
    dataset = saved.get("dataset", {})
    if dataset.get("name") == "arrays" and "standardize" not in dataset:
        config.dataset.standardize = False  # saved before float arrays were standardised
    return config


def _overlay(node: ml_collections.ConfigDict, saved: Mapping) -> None:
    for key, value in saved.items():
        default = node.get(key)
        if isinstance(value, Mapping) and isinstance(default, ml_collections.ConfigDict):
            _overlay(default, value)
            continue
        if isinstance(value, list) and (isinstance(default, tuple) or default is None):
            value = tuple(value)
        with node.unlocked(), node.ignore_type():
            node[key] = ml_collections.ConfigDict(value) if isinstance(value, Mapping) else value


def check_values(config: ml_collections.ConfigDict) -> None:
    """Refuses a value no run can use before anything is built or any checkpoint is touched:
    a number that is not finite (NaN, inf, or past float32) or an integer past `INT_LIMIT`
    anywhere in the config, then the ranges of `DEFAULTS` and of the nets' shared fields
    (`MODEL_RANGES`): a batch of 0, a negative learning rate, keeping no checkpoint."""
    for key, value in _numbers(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config.{key}={value} is not a finite number; give a finite "
                             f"value (`descent config show FILE` shows the default)")
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise ValueError(f"config.{key}={value:g} is past the largest float32 "
                             f"({FLOAT32_MAX:.4g}), which training computes in: it would be "
                             f"inf there")
        if isinstance(value, int) and abs(value) >= INT_LIMIT:
            raise ValueError(f"config.{key}={value} is too large: integers must be below 2**31 "
                             f"({INT_LIMIT:,}), the range of JAX's 32-bit step counter and "
                             f"seeds")
    checks = [(key, allowed) for key, _, allowed in DEFAULTS if allowed is not None]
    checks += [(f"model.{field}", allowed) for field, allowed in MODEL_RANGES.items()]
    for key, allowed in checks:
        value = _get(config, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and allowed.refuses(value):
            raise ValueError(f"config.{key}={value} must be {allowed}")
    if not config.eval_split:  # test_split may be empty (no final test); this one may not
        raise ValueError("config.eval_split is empty; name the split evaluated during "
                         "training, e.g. --config.eval_split=validation")
    if not config.steps and config.epochs < 1:
        raise ValueError(f"config.epochs={config.epochs} must be at least 1 (or set "
                         f"config.steps)")
    _check_compile_cache(config.get("compile_cache", ""))


def _check_compile_cache(folder: str) -> None:
    """Refuses a compilation-cache folder JAX would not use, which it would otherwise skip in
    silence: a URL (made into a local folder named "gs:") or a file."""
    if not folder:
        return
    if URL.match(folder):
        raise ValueError(f"config.compile_cache={folder!r} is a URL: the compilation cache is a "
                         f"folder on this machine's file system; name one, or '' to turn it off")
    path = os.path.expanduser(folder)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"config.compile_cache={folder!r} is a file, not a folder; name a "
                         f"folder (it is made if missing), or '' to turn it off")


def _numbers(node: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted key, number) for every int and float in `node`, tuples' elements included."""
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _numbers(value, f"{prefix}{key}.")
            continue
        for element in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(element, (int, float)) and not isinstance(element, bool):
                yield f"{prefix}{key}", element


def _get(config: ml_collections.ConfigDict, key: str):
    node = config
    for name in key.split("."):
        node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    return node


def override(config: ml_collections.ConfigDict, args: Sequence[str]
             ) -> tuple[ml_collections.ConfigDict, list[str], list[str]]:
    """Applies the overrides among `args` (`--config.a.b=value` or `--config.a.b value`) to a
    copy of `config`, parsed by ml_collections' `config_flags`: each value typed as the field's
    default, an unknown key or a key given twice refused. `--config.model.name=NET` first
    switches the `model` group to NET's fields (`switch_model`), so the others may set them.

    Returns the config (locked: no key can be added), the overridden keys in order, and the
    arguments that are not overrides.
    """
    from absl import flags

    config = copy.deepcopy(config)
    name = _parse(copy.deepcopy(config), args, strict=False)[0].model.name
    if name != config.model.name:
        config.model = switch_model(config.model, name)
    defaults = copy.deepcopy(config)
    config, flag_values, rest = _parse(config, args, strict=True)
    keys = list(flag_values["config"].override_values)
    for key in keys:
        flag = flag_values[f"config.{key}"]
        if flag.present > 1 and not isinstance(flag, flags.MultiFlag):
            raise ValueError(f"--config.{key} is given {flag.present} times; give it once")
        if isinstance(_get(config, key), ml_collections.ConfigDict):
            raise ValueError(f"config.{key} is a group; set one of its keys: "
                             f"{', '.join(_get(config, key))}")
        _check_elements(key, _get(config, key), _get(defaults, key))
    return config, keys, rest


def _check_elements(key: str, value, default) -> None:
    """config_flags types a tuple but not its elements: (8, 16) must not become ('a', 'b')."""
    if not isinstance(default, tuple) or not default:
        return
    kinds = {type(v) for v in default}
    if float in kinds and kinds <= {int, float}:
        kinds = {int, float}  # 2 is a fine float
    if not all(type(v) in kinds for v in value):
        raise ValueError(f"config.{key}={value!r} is not a tuple of "
                         f"{' or '.join(sorted(k.__name__ for k in kinds))} (the default is "
                         f"{default!r}); write e.g. {','.join(map(str, default))}")


def switch_model(model: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The `model` group for net `name` in place of `model`'s. A variant of the same
    constructor (another recurrent cell, another ResNet depth: the same fields) keeps every
    value; any other net comes with its own fields at their defaults, the old ones dropped."""
    same_fields = set(nets.fields(model.name)) == set(nets.fields(name))
    return model_fields(name, model if same_fields else {})


def _parse(config, args: Sequence[str], strict: bool):
    """One pass of `config_flags` over `args`; `strict=False` accepts keys `config` lacks (the
    pass that only reads a new model.name)."""
    from absl import flags
    from ml_collections import config_flags

    flag_values, argv = flags.FlagValues(), ["descent", *args]
    try:
        holder = config_flags.DEFINE_config_dict(
            "config", config, flag_values=flag_values, sys_argv=argv, lock_config=strict,
            accept_new_attributes=not strict)
        rest = flag_values(argv, known_only=True)[1:]
    except (KeyError, AttributeError):
        raise ValueError(_unknown_key(config, args)) from None
    except (ValueError, SyntaxError) as e:  # a key config_flags cannot read, e.g. `--config.`
        raise ValueError(f"an override is --config.KEY=VALUE, KEY a dotted path such as "
                         f"optimizer.name ({e})") from None
    except flags.Error as e:
        raise ValueError(_bad_value(config, str(e))) from None
    return holder.value, flag_values, rest


def _unknown_key(config: ml_collections.ConfigDict, args: Sequence[str]) -> str:
    """'unknown config key ...; keys of ...: ...' for the first override `config` lacks."""
    for arg in args:
        found = re.match(r"-{1,2}(?:no)?config\.([^=]+)", arg)
        if not found:
            continue
        key, node, depth = found.group(1), config, 0
        names = key.split(".")
        while depth < len(names) and isinstance(node, ml_collections.ConfigDict) \
                and names[depth] in node:
            node, depth = node[names[depth]], depth + 1
        if depth == len(names):
            continue
        where = ".".join(["config", *names[:depth]])
        known = ", ".join(node) if isinstance(node, ml_collections.ConfigDict) else "none"
        if where == "config.model":
            return (f"unknown config key 'config.{key}': model {config.model.name!r} has no "
                    f"field {names[depth]!r}; its fields: {known}")
        return f"unknown config key 'config.{key}'; keys of {where}: {known}"
    return "an unknown config key; `descent config show FILE` lists every key"


def _bad_value(config: ml_collections.ConfigDict, absl_message: str) -> str:
    """Our one line for absl's 'flag --config.KEY=VALUE: reason' or 'Missing value for flag'."""
    missing = re.match(r"Missing value for flag (--\S+)", absl_message)
    if missing:
        return f"{missing.group(1)} needs a value: {missing.group(1)}=VALUE"
    found = re.match(r"flag --config\.([\w.]+)=(.*?): ", absl_message)
    if not found:
        return absl_message.splitlines()[0]
    key, value = found.groups()
    default = _get(config, key)
    if isinstance(default, ml_collections.ConfigDict):
        return f"config.{key} is a group; set one of its keys: {', '.join(default)}"
    hint = {bool: "; write true or false", tuple: "; write e.g. 8,16"}.get(type(default), "")
    return (f"config.{key}={value!r} is not {_a(type(default))} (the default is {default!r})"
            f"{hint}")


def _a(kind: type) -> str:
    return f"{'an' if kind.__name__[0] in 'aeiou' else 'a'} {kind.__name__}"
