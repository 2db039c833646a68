"""Configs: Python files whose `get_config()` returns an ml_collections.ConfigDict, plus overrides.

`--config.optimizer.name=adamw` sets one field; an unknown key or a value of the wrong type is
an error that names the known keys or the expected type.
"""
import ast
import importlib.util
import os
import traceback

import ml_collections


def load_config(path: str) -> ml_collections.ConfigDict:
    """Runs the config file at `path` and returns its `get_config()`.

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
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"config file {path!r} defines no get_config()")
        config = module.get_config(variant) if variant else module.get_config()
    except ValueError:  # our own messages (an unknown variant) and the one above: as they are
        raise
    except SyntaxError as e:
        raise ValueError(f"config file {path}:{e.lineno}: syntax error: {e.msg}") from e
    except SystemExit as e:
        raise ValueError(f"config file {path} called sys.exit({e.code!r}) instead of returning "
                         f"a config") from None
    except Exception as e:  # noqa: BLE001 - the traceback is there under --verbose
        line = next((frame.lineno for frame in reversed(traceback.extract_tb(e.__traceback__))
                     if os.path.abspath(frame.filename) == os.path.abspath(path)), "?")
        raise ValueError(f"config file {path}:{line}: {type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config file {path}: get_config() returned a {type(config).__name__}, "
                         f"not an ml_collections.ConfigDict")
    return config


# (key, the lowest allowed value, whether that value itself is allowed, the highest (excluded))
_RANGES = [
    ("dataset.batch_size", 1, True, None), ("dataset.eval_batch_size", 1, True, None),
    ("dataset.train_examples", 0, True, None), ("steps", 0, True, None),
    ("eval_every", 0, True, None), ("log_every", 1, True, None),
    ("checkpoint.every", 0, True, None), ("checkpoint.keep", 1, True, None),
    ("checkpoint.keep_best", 0, True, None), ("early_stopping.patience", 0, True, None),
    ("optimizer.learning_rate", 0, False, None), ("optimizer.momentum", 0, True, 1),
    ("optimizer.weight_decay", 0, True, None), ("optimizer.warmup_steps", 0, True, None),
    ("optimizer.warmup_epochs", 0, True, None), ("optimizer.reference_batch_size", 0, True, None),
    ("optimizer.decay_every", 0, True, None), ("optimizer.decay_factor", 0, False, None),
    ("optimizer.clip_norm", 0, True, None), ("loss.label_smoothing", 0, True, 1),
    ("model.dropout", 0, True, 1), ("optimizer.accumulate_steps", 1, True, None),
    ("optimizer.ema_decay", 0, True, 1), ("profile.start_step", 0, True, None),
    ("profile.num_steps", 1, True, None), ("dataset.validation_fraction", 0, True, 1),
    ("dataset.test_fraction", 0, True, 1), ("dataset.image_size", 0, True, None),
    ("dataset.max_in_memory_mb", 0, True, None),
]


def check_values(config: ml_collections.ConfigDict) -> None:
    """Refuses a value no run can use (a batch of 0, a negative learning rate, keeping no
    checkpoint) before anything is built or any checkpoint is touched."""
    for key, low, low_ok, high in _RANGES:
        node = config
        for name in key.split("."):
            node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
        if node is None or isinstance(node, bool):
            continue
        if node < low or (node == low and not low_ok) or (high is not None and node >= high):
            bound = (f"at least {low}" if low_ok else f"above {low}") + (
                f" and below {high}" if high is not None else "")
            raise ValueError(f"config.{key}={node} must be {bound}")
    if not config.get("steps") and config.get("epochs", 1) < 1:
        raise ValueError(f"config.epochs={config.epochs} must be at least 1 (or set "
                         f"config.steps)")


def apply_override(config: ml_collections.ConfigDict, dotted_key: str, text: str) -> None:
    """Sets `config.<dotted_key>` from the command-line string `text`, keeping its type."""
    *parents, leaf = dotted_key.split(".")
    node = config
    for depth, name in enumerate(parents + [leaf]):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            where = ".".join(["config"] + parents[:depth])
            known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
            raise ValueError(f"unknown config key {'config.' + dotted_key!r}; "
                             f"keys of {where}: {known}")
        if name != leaf:
            node = node[name]
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict):
        raise ValueError(f"config.{dotted_key} is a group; set one of its keys: "
                         f"{', '.join(sorted(old.keys()))}")
    node[leaf] = _parse(text, old, dotted_key)


def _parse(text: str, old, key: str):
    expected = type(old)
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(old, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(old, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(old, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(old, (tuple, list)):
        if isinstance(value, int):
            value = (value,)
        if isinstance(value, (tuple, list)):
            return expected(value)
    elif old is None:
        return value
    raise ValueError(f"config.{key}={text!r} is not a {expected.__name__} "
                     f"(the default is {old!r})")


def split_overrides(args: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Separates `--config.a.b=value` (or `--config.a.b value`) from the other arguments."""
    overrides, rest = [], []
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                if not args:
                    raise ValueError(f"{arg} needs a value: {arg}=VALUE")
                value = args.pop(0)
            earlier = next((v for k, v in overrides if k == key), None)
            if earlier is not None:
                raise ValueError(f"--config.{key} is given twice ({earlier!r} and {value!r}); "
                                 f"give it once")
            overrides.append((key, value))
        else:
            rest.append(arg)
    return overrides, rest
