"""The training state: one pytree holding everything a step reads and writes."""
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    step: jax.Array         # int32 scalar: number of updates applied
    params: nnx.State       # trainable nnx.Param variables
    opt_state: optax.OptState
    model_state: nnx.State  # everything else the model holds: batch-norm statistics
    rng: jax.Array          # raw uint32 key; each step folds in its number
    ema_params: nnx.State | None = None  # the parameters' moving average (optimizer.ema_decay)


def create_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int,
                 ema: bool = False) -> tuple[nnx.GraphDef, TrainState]:
    """Splits `model` into its static graph definition and a fresh TrainState; with `ema`, the
    state also holds a moving average of the parameters, starting at them."""
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       model_state=model_state, rng=jax.random.PRNGKey(seed),
                       ema_params=jax.tree.map(jnp.copy, params) if ema else None)
    return graphdef, state


def named(tree: Any) -> dict[str, Any]:
    """'params/hidden/0/kernel' -> array, for every array in `tree` (a state, part of one, or
    orbax's metadata of one): the names checkpoints, warm starts and frozen patterns use."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(path): leaf for path, leaf in leaves}


def path_name(path) -> str:
    """A pytree path as `named` writes it: 'params/hidden/0/kernel'."""
    def name(key):
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return "/".join(name(k) for k in path if name(k) != "value")


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree` without its values: a restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


def num_params(state: TrainState) -> int:
    return sum(x.size for x in jax.tree.leaves(state.params))
