"""The pure training and evaluation steps.

Inside `jax.jit` the model is rebuilt from its static graph definition and the state pytree
(`nnx.merge`), called, and split again; `nnx.jit` stays out of the hot path (DESIGN.md
section 1: 0.16 ms/step for merge-in-jit against 0.97 ms for `nnx.jit` on a small MLP).
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from train.losses import Task
from train.state import TrainState


def param_path(path) -> str:
    """'hidden/0/kernel' for a parameter's key path in the state pytree."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", ""))) for k in path
                    if not isinstance(k, jax.tree_util.GetAttrKey))


def layer_norms(tree) -> dict[str, jax.Array]:
    """The global norm of every array of `tree`, keyed by its parameter path."""
    return {param_path(path): optax.tree.norm(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def make_loss_fn(graphdef: nnx.GraphDef, task: Task):
    """Returns `loss_of(params, model_state, batch, dropout_key) -> (loss, (logits,
    model_state))`: the mean training loss of the model in training mode (dropout on, batch
    norm on the batch's statistics), the function every gradient here is taken of."""

    def loss_of(params, model_state, batch, dropout_key):
        # copy=True: fresh variables at this trace level, so batch norm may update them
        model = nnx.merge(graphdef, params, model_state, copy=True)
        logits = model(batch["inputs"], train=True, rngs=dropout_key)
        loss = jnp.mean(task.loss(logits, batch["targets"]))
        _, _, model_state = nnx.split(model, nnx.Param, ...)
        return loss, (logits, model_state)

    return loss_of


def make_gradient_step(graphdef: nnx.GraphDef, task: Task):
    """Returns `gradients(state, batch) -> grads`: the gradient of the mean training loss over
    `batch` with respect to every parameter, exactly as the next `train_step` would compute it
    (same dropout key), without applying it. For studies of the gradient itself."""
    loss_of = make_loss_fn(graphdef, task)

    def gradients(state: TrainState, batch):
        dropout_key = jax.random.fold_in(state.rng, state.step)
        return jax.grad(lambda p: loss_of(p, state.model_state, batch, dropout_key)[0])(
            state.params)

    return gradients


def make_train_step(graphdef: nnx.GraphDef, task: Task, tx: optax.GradientTransformation,
                    axis_name: str | None = None, layer_grad_norms: bool = False):
    """Returns `train_step(state, batch) -> (state, metrics)`; jit it with the state donated.

    The metrics are the loss, the task's metrics (accuracy, or mean absolute error), and the
    global norms of the gradient and the updated parameters, plus, with `layer_grad_norms`, the
    gradient norm of every parameter array as `grad_norm/<path>`: all computed before the
    update, from the parameters the step started with (the gradient), or after it (the norm).
    Under `jax.pmap`, pass the mapped `axis_name`: gradients and metrics are then averaged
    over it (`lax.pmean`), so every device applies the same update.
    """

    loss_of = make_loss_fn(graphdef, task)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        """`batch["inputs"]` goes into the model, whose logits are scored on `batch["targets"]`."""
        dropout_key = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:  # each device's share of the batch gets its own masks
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, state.model_state, batch, dropout_key)
        measured = {k: jnp.mean(fn(logits, batch["targets"])) for k, fn in task.metrics.items()}
        if axis_name is not None:
            grads, loss, measured = jax.lax.pmean((grads, loss, measured), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            **measured,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),  # non-finite params are caught before a save
        }
        if layer_grad_norms:
            metrics.update({f"grad_norm/{k}": v for k, v in layer_norms(grads).items()})
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state)
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, task: Task):
    """Returns `eval_step(state, batch) -> sums` of the plain loss and the task's metrics, and
    their count, over the targets of unmasked examples (every position of a sequence counts
    once; a regression example's target values count once together)."""

    def eval_step(state: TrainState, batch) -> dict:
        model = nnx.merge(graphdef, state.params, state.model_state)
        logits = model(batch["inputs"], train=False)
        targets = batch["targets"]
        loss = task.eval_loss(logits, targets)  # one value per target: (B,) or (B, L)
        mask_B = batch.get("mask", jnp.ones(loss.shape[:1], bool))
        weight = jnp.broadcast_to(
            mask_B.reshape(-1, *[1] * (loss.ndim - 1)), loss.shape).astype(jnp.float32)
        sums = {"loss": jnp.sum(loss * weight), "count": jnp.sum(weight)}
        for k, fn in task.metrics.items():
            sums[k] = jnp.sum(fn(logits, targets) * weight)
        return sums

    return eval_step


def summarize_eval(sums: dict) -> dict:
    """Turns accumulated eval sums into means: loss and the task's metrics, and the count."""
    count = float(sums["count"])
    means = {k: float(v) / count for k, v in sums.items() if k != "count"}
    return {**means, "examples": int(count)}
