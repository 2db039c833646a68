"""Configs: Python files whose `get_config()` returns an ml_collections.ConfigDict, plus overrides.

`--config.optimizer.name=adamw` sets one field; an unknown key or a value of the wrong type is
an error that names the known keys or the expected type.
"""
import ast
import importlib.util
import os

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
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config()")
    return module.get_config(variant) if variant else module.get_config()


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
            overrides.append((key, value))
        else:
            rest.append(arg)
    return overrides, rest
