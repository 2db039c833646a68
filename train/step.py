"""The pure training and evaluation steps.

Inside `jax.jit` the model is rebuilt from its static graph definition and the state pytree
(`nnx.merge`), called, and split again; `nnx.jit` stays out of the hot path (DESIGN.md
section 1: 0.16 ms/step for merge-in-jit against 0.97 ms for `nnx.jit` on a small MLP).
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from train.state import TrainState

# (logits_Bx...xK, targets_Bx...) -> loss_Bx...: one class per example, or per position (a
# language model's targets_BxL), averaged over every target.
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    axis_name: str | None = None):
    """Returns `train_step(state, batch) -> (state, metrics)`; jit it with the state donated.

    Under `jax.pmap`, pass the mapped `axis_name`: gradients and metrics are then averaged
    over it (`lax.pmean`), so every device applies the same update.
    """

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        """`batch["inputs"]` goes into the model, whose logits are scored on `batch["targets"]`."""
        dropout_key = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:  # each device's share of the batch gets its own masks
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))

        def loss_of(params):
            # copy=True: fresh variables at this trace level, so batch norm may update them
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            logits = model(batch["inputs"], train=True, rngs=dropout_key)
            loss = jnp.mean(loss_fn(logits, batch["targets"]))
            _, _, model_state = nnx.split(model, nnx.Param, ...)
            return loss, (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["targets"])
        if axis_name is not None:
            grads, loss, accuracy = jax.lax.pmean((grads, loss, accuracy), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),  # non-finite params are caught before a save
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state)
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn):
    """Returns `eval_step(state, batch) -> sums` of loss, correct and count over the targets
    of unmasked examples (every position of a sequence counts once)."""

    def eval_step(state: TrainState, batch) -> dict:
        model = nnx.merge(graphdef, state.params, state.model_state)
        logits = model(batch["inputs"], train=False)
        targets = batch["targets"]
        mask_B = batch.get("mask", jnp.ones(targets.shape[:1], bool))
        weight = jnp.broadcast_to(
            mask_B.reshape(-1, *[1] * (targets.ndim - 1)), targets.shape).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(loss_fn(logits, targets) * weight),
            "correct": jnp.sum((jnp.argmax(logits, -1) == targets) * weight),
            "count": jnp.sum(weight),
        }

    return eval_step


def summarize_eval(sums: dict) -> dict:
    """Turns accumulated eval sums into mean loss and accuracy."""
    count = float(sums["count"])
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count,
            "examples": int(count)}
