"""Orbax checkpoints: the train state, the config beside it, the metrics that rank it.

Each checkpoint is a directory `<workdir>/checkpoints/<step>/` with the items `state`
(StandardSave) and `config` (JSON). Orbax writes into a temporary directory and renames it when
complete, so a failed or interrupted save never replaces a good checkpoint. Nothing is pickled.
"""
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from train.state import TrainState, abstract


def metric_mode(monitor: str) -> str:
    """'min' for losses, 'max' for everything else (accuracy)."""
    return "min" if monitor.endswith("loss") else "max"


def open_manager(workdir: str, *, keep: int = 3, keep_best: int = 1,
                 monitor: str = "eval_accuracy", read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the latest `keep` checkpoints and the best `keep_best` by `monitor`."""
    mode = metric_mode(monitor)
    policy = None
    if not read_only:
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=lambda m: m[monitor], reverse=mode == "min", n=keep_best,
                     keep_checkpoints_without_metrics=False),
        ])
    options = ocp.CheckpointManagerOptions(
        best_fn=lambda m: m[monitor], best_mode=mode, preservation_policy=policy,
        read_only=read_only, create=not read_only, save_interval_steps=0 if read_only else 1)
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, state: TrainState, config: dict,
         metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` and `config` at `state.step`."""
    manager.save(int(state.step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config)), metrics=metrics)


def resolve_step(manager: ocp.CheckpointManager, which: str | int = "latest") -> int:
    """'latest', 'best' or a step number -> a step that exists in `manager`."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {manager.directory}; run `descent train` first")
    if which == "latest":
        return manager.latest_step()
    if which == "best":
        return manager.best_step()
    try:
        step = int(which)
    except ValueError:
        raise ValueError(f"--checkpoint {which!r} is not 'best', 'latest' or a step") from None
    if step not in steps:
        raise ValueError(f"no checkpoint at step {step} in {manager.directory}; "
                         f"saved steps: {', '.join(map(str, sorted(steps)))}")
    return step


def restore(manager: ocp.CheckpointManager, step: int, like: TrainState) -> TrainState:
    """Restores the state at `step` into the structure, shapes and shardings of `like`.

    A checkpoint of another model or optimizer raises ValueError naming the differing arrays.
    """
    saved = _shapes(manager.item_metadata(step)["state"])
    wanted = _shapes(like)
    differences = (
        [f"{p}: checkpoint {saved[p]} vs model {wanted[p]}"
         for p in wanted if p in saved and saved[p] != wanted[p]]
        + [f"{p}: not in the checkpoint" for p in wanted if p not in saved]
        + [f"{p}: not in the model" for p in saved if p not in wanted])
    if differences:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more"
                                              if len(differences) > 6 else "")
        raise ValueError(f"the checkpoint at step {step} in {manager.directory} does not fit this "
                         f"model and optimizer ({len(differences)} arrays differ): {shown}. "
                         f"Use the config it was saved with, or another --workdir")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract(like))))
    return restored.state


def saved_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The config saved with the checkpoint at `step`."""
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def _shapes(tree) -> dict[str, tuple]:
    """'params/hidden/0/kernel' -> shape, for every array in `tree` (a state or its metadata)."""
    def name(key):
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path if name(k) != "value"): tuple(leaf.shape)
            for path, leaf in leaves}
