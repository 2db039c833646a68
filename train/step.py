"""The pure training and evaluation steps.

Inside `jax.jit` the model is rebuilt from its static graph definition and the state pytree
(`nnx.merge`), called, and split again; `nnx.jit` stays out of the hot path (docs/design.md,
section 1: 0.16 ms/step for merge-in-jit against 0.97 ms for `nnx.jit` on a small MLP).
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from train.losses import Task
from train.optimizers import decay_mask
from train.state import TrainState


def param_path(path) -> str:
    """'hidden/0/kernel' for a parameter's key path in the state pytree."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", ""))) for k in path
                    if not isinstance(k, jax.tree_util.GetAttrKey))


def layer_norms(tree) -> dict[str, jax.Array]:
    """The global norm of every array of `tree`, keyed by its parameter path."""
    return {param_path(path): optax.tree.norm(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def scores(model, inputs, targets, task: Task, *, train: bool, rngs=None) -> dict:
    """The model's values per target (B,) or (B, L): `objective` (what the gradient is taken
    of: the loss with label smoothing), `loss` (the plain loss) and each of the task's metrics.

    With `task.chunk` = C > 0 the model is a language model with `features` (the last hidden
    states, B x L x D) and `logits` (of some positions' states): the float32 logits are then
    made C positions at a time, scored and dropped, and made again in the backward pass
    (`jax.checkpoint`), so no step holds more than B x C x V of them instead of B x L x V.
    The same numbers as all at once, to float32 rounding (tests/test_losses.py).
    """
    def score(logits, targets):
        return {"objective": task.loss(logits, targets), "loss": task.eval_loss(logits, targets),
                **{k: fn(logits, targets) for k, fn in task.metrics.items()}}

    if not task.chunk:
        return score(model(inputs, train=train, rngs=rngs), targets)
    h_BxLxD = model.features(inputs, train=train, rngs=rngs)
    (b, length, d), c = h_BxLxD.shape, task.chunk
    check_chunk(c, length)
    h_NxBxCxD = jnp.moveaxis(h_BxLxD.reshape(b, length // c, c, d), 1, 0)
    t_NxBxC = jnp.moveaxis(targets.reshape(b, length // c, c), 1, 0)
    scored = jax.lax.map(jax.checkpoint(lambda ht: score(model.logits(ht[0]), ht[1])),
                         (h_NxBxCxD, t_NxBxC))
    return jax.tree.map(lambda s_NxBxC: jnp.moveaxis(s_NxBxC, 0, 1).reshape(b, length), scored)


def check_chunked(model, task: Task, input_shape) -> None:
    """Refuses a `task.chunk` that `scores` cannot use with `model` and inputs of `input_shape`."""
    if not task.chunk:
        return
    if not (hasattr(model, "features") and hasattr(model, "logits")) or len(input_shape) != 1:
        raise ValueError(f"loss.chunk={task.chunk} applies to a language model's logits per "
                         f"position (model.name=gpt), not to {type(model).__name__}; set "
                         f"loss.chunk=0")
    check_chunk(task.chunk, input_shape[0])


def check_chunk(chunk: int, length: int) -> None:
    if length % chunk:
        divisors = [n for n in range(1, length + 1) if length % n == 0 and n < length]
        nearest = min(divisors, key=lambda n: abs(n - chunk))
        raise ValueError(f"loss.chunk={chunk} does not divide the sequence of {length} positions; "
                         f"use a divisor such as {nearest}, or 0 for all at once")


def make_loss_fn(graphdef: nnx.GraphDef, task: Task):
    """Returns `loss_of(params, model_state, batch, dropout_key) -> (objective, (measured,
    model_state))`: the mean training objective of the model in training mode (dropout on,
    batch norm on the batch's statistics), the function every gradient here is taken of, and
    the means of the plain loss and the task's metrics beside it."""

    def loss_of(params, model_state, batch, dropout_key):
        # copy=True: fresh variables at this trace level, so batch norm may update them
        model = nnx.merge(graphdef, params, model_state, copy=True)
        per_target = scores(model, batch["inputs"], batch["targets"], task, train=True,
                            rngs=dropout_key)
        measured = {k: jnp.mean(v) for k, v in per_target.items()}
        _, _, model_state = nnx.split(model, nnx.Param, ...)
        return measured.pop("objective"), (measured, model_state)

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


def split_micro_batches(batch: dict, k: int) -> dict:
    """(B, ...) arrays -> (k, B / k, ...): micro-batch j holds rows j, j + k, j + 2k, ..., so
    with the batch split over devices in blocks, every micro-batch takes an equal share of
    every device's rows and stays split over all of them."""
    return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]),
                                               1, 0), batch)


def make_train_step(graphdef: nnx.GraphDef, task: Task, tx: optax.GradientTransformation,
                    axis_name: str | None = None, layer_grad_norms: bool = False, *,
                    accumulate_steps: int = 1, ema_decay: float = 0.0, l2: float = 0.0,
                    report_objective: bool = False):
    """Returns `train_step(state, batch) -> (state, metrics)`; jit it with the state donated.

    The metrics are the plain loss (`loss`, what evaluation reports), the task's metrics
    (accuracy, or mean absolute error), and the global norms of the gradient and the updated
    parameters, plus, with `layer_grad_norms`, the gradient norm of every parameter array as
    `grad_norm/<path>`. With `report_objective` they also hold `objective`, what the gradient
    is taken of: the loss with label smoothing, plus `l2` / 2 * |w|^2 for L2 weight decay
    (coupled decay: it is `optax.add_decayed_weights(l2)` in the optimizer).

    With `accumulate_steps` k > 1 the batch is split into k micro-batches (`split_micro_batches`)
    whose gradients are computed one after another (`lax.scan`, so the activations of one
    micro-batch are alive at a time) and averaged: one update of the whole batch, with the
    memory of one micro-batch. With `ema_decay` d > 0 the state's `ema_params` follow the
    parameters as their bias-corrected exponential moving average: after update t,
    sum_i d^(t-i) (1 - d) params_i / (1 - d^t).

    Mapped over devices (the `pmap` strategy, train/pmap.py), pass the mapped `axis_name`:
    gradients and metrics are then averaged over it (`lax.pmean`), so every device applies the
    same update.
    """

    loss_of = make_loss_fn(graphdef, task)

    def gradients_and_metrics(params, model_state, batch, dropout_key):
        (objective, (measured, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            params, model_state, batch, dropout_key)
        if report_objective:
            measured["objective"] = objective
        return grads, model_state, measured

    def accumulated(params, model_state, batch, dropout_key):
        def micro_step(carry, i_and_micro_batch):
            grads_sum, model_state = carry
            i, micro_batch = i_and_micro_batch
            grads, model_state, measured = gradients_and_metrics(
                params, model_state, micro_batch, jax.random.fold_in(dropout_key, i))
            return (jax.tree.map(jnp.add, grads_sum, grads), model_state), measured

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads_sum, model_state), measured_K = jax.lax.scan(
            micro_step, (zeros, model_state),
            (jnp.arange(accumulate_steps), split_micro_batches(batch, accumulate_steps)))
        return (jax.tree.map(lambda g: g / accumulate_steps, grads_sum), model_state,
                jax.tree.map(jnp.mean, measured_K))

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        """`batch["inputs"]` goes into the model, whose logits are scored on `batch["targets"]`."""
        dropout_key = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:  # each device's share of the batch gets its own masks
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
        compute = gradients_and_metrics if accumulate_steps == 1 else accumulated
        grads, model_state, measured = compute(state.params, state.model_state, batch,
                                               dropout_key)
        if axis_name is not None:
            grads, measured = jax.lax.pmean((grads, measured), axis_name)
        if report_objective and l2:
            decayed = [p for p, decays in zip(jax.tree.leaves(state.params),
                                              jax.tree.leaves(decay_mask(state.params))) if decays]
            measured["objective"] += 0.5 * l2 * sum(jnp.sum(jnp.square(p)) for p in decayed)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **measured,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),  # non-finite params are caught before a save
        }
        if layer_grad_norms:
            metrics.update({f"grad_norm/{k}": v for k, v in layer_norms(grads).items()})
        step = state.step + 1
        ema_params = state.ema_params
        if ema_decay:
            weight = (1 - ema_decay) / (1 - ema_decay ** step.astype(jnp.float32))
            ema_params = jax.tree.map(lambda e, p: e + weight.astype(p.dtype) * (p - e),
                                      ema_params, params)
        new_state = state.replace(step=step, params=params, opt_state=opt_state,
                                  model_state=model_state, ema_params=ema_params)
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, task: Task):
    """Returns `eval_step(state, batch) -> sums` of the plain loss and the task's metrics, and
    their count, over the targets of unmasked examples (every position of a sequence counts
    once; a regression example's target values count once together)."""

    def eval_step(state: TrainState, batch) -> dict:
        model = nnx.merge(graphdef, state.params, state.model_state)
        per_target = scores(model, batch["inputs"], batch["targets"], task, train=False)
        loss = per_target["loss"]  # one value per target: (B,) or (B, L)
        mask_B = batch.get("mask", jnp.ones(loss.shape[:1], bool))
        weight = jnp.broadcast_to(
            mask_B.reshape(-1, *[1] * (loss.ndim - 1)), loss.shape).astype(jnp.float32)
        sums = {"loss": jnp.sum(loss * weight), "count": jnp.sum(weight)}
        for k in task.metrics:
            sums[k] = jnp.sum(per_target[k] * weight)
        return sums

    return eval_step


def summarize_eval(sums: dict) -> dict:
    """Turns accumulated eval sums into means: loss and the task's metrics, and the count."""
    count = float(sums["count"])
    means = {k: float(v) / count for k, v in sums.items() if k != "count"}
    return {**means, "examples": int(count)}
