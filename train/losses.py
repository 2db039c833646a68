"""Losses and metrics, per example: callers weight and average them (padded evaluation batches
carry a mask). A task (classification or regression) is the loss a run trains on, the plain loss
it is evaluated on, and the metrics reported beside the loss."""
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits_BxK, labels_B, label_smoothing: float = 0.0):
    """-sum_k q_k log softmax(logits)_k with q the one-hot label, smoothed towards uniform.

    Computed from the label's log-probability and the mean log-probability, never a one-hot
    array: for a language model that would be another (batch, length, vocabulary) tensor.
    """
    log_p_BxK = jax.nn.log_softmax(logits_BxK)
    nll_B = -jnp.take_along_axis(log_p_BxK, labels_B[..., None], axis=-1)[..., 0]
    if not label_smoothing:
        return nll_B
    # q = (1 - e) one_hot + e / K  =>  -sum q log p = (1 - e) nll + e mean_k(-log p_k)
    return (1.0 - label_smoothing) * nll_B - label_smoothing * jnp.mean(log_p_BxK, axis=-1)


def sigmoid_binary_cross_entropy(logits, targets):
    """-[y log p + (1-y) log(1-p)] with p = sigmoid(logit), averaged over the last axis."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)


def mean_squared_error(predictions, targets):
    """mean_k (prediction_k - target_k)^2 over the last axis."""
    return jnp.mean(jnp.square(predictions - targets), axis=-1)


def _one_hot_targets(loss):
    return lambda logits_BxK, labels_B, label_smoothing=0.0: loss(
        logits_BxK, jax.nn.one_hot(labels_B, logits_BxK.shape[-1]))


# Classification losses on (logits, integer labels). "binary_cross_entropy" treats each class as
# an independent yes/no output; "mse" regresses the raw outputs onto one-hot targets.
LOSSES = {
    "cross_entropy": softmax_cross_entropy,
    "binary_cross_entropy": _one_hot_targets(sigmoid_binary_cross_entropy),
    "mse": _one_hot_targets(mean_squared_error),
}


def classification_loss(name: str, label_smoothing: float = 0.0):
    """Returns `loss(logits_BxK, labels_B) -> per-example loss_B` for the loss called `name`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    if label_smoothing and name != "cross_entropy":
        raise ValueError(f"loss.label_smoothing applies to cross_entropy only, not {name!r}")
    loss = LOSSES[name]
    return lambda logits_BxK, labels_B: loss(logits_BxK, labels_B, label_smoothing=label_smoothing)


def accuracy(logits_BxK, labels_B):
    """1.0 where the largest logit is the label's, per target."""
    return (jnp.argmax(logits_BxK, -1) == labels_B).astype(jnp.float32)


def absolute_error(predictions_BxK, targets_BxK):
    """mean_k |prediction_k - target_k| over the last axis, in the targets' own units."""
    return jnp.mean(jnp.abs(predictions_BxK - targets_BxK), axis=-1)


# Regression losses on (predictions_BxK, float targets_BxK).
REGRESSION_LOSSES = {"mse": mean_squared_error}

PerTarget = Callable[[jax.Array, jax.Array], jax.Array]


class Task(NamedTuple):
    name: str
    loss: PerTarget                 # what the gradient is taken of (with label smoothing)
    eval_loss: PerTarget            # the plain loss, for evaluation
    metrics: dict[str, PerTarget]   # reported beside the loss: accuracy, or mean absolute error
    chunk: int = 0                  # > 0: a language model's logits are computed this many
                                    # positions at a time (train/step.py, `scores`)


def make_task(task: str, loss_name: str, label_smoothing: float = 0.0, chunk: int = 0) -> Task:
    """The losses and metrics of a `classification` (integer labels, logits) or `regression`
    (float targets, one output per target value) run trained on the loss called `loss_name`;
    with `chunk` > 0, a language model's loss is computed that many positions at a time."""
    if chunk < 0:
        raise ValueError(f"loss.chunk={chunk} must be 0 (all positions at once) or a number of "
                         f"positions")
    if task == "classification":
        return Task(task, classification_loss(loss_name, label_smoothing),
                    classification_loss(loss_name), {"accuracy": accuracy}, chunk)
    if task != "regression":
        raise ValueError(f"unknown task {task!r}; known: classification, regression")
    if chunk:
        raise ValueError(f"loss.chunk={chunk} applies to a language model's logits per position, "
                         f"not to a regression; set loss.chunk=0")
    if loss_name not in REGRESSION_LOSSES:
        raise ValueError(f"loss.name={loss_name!r} does not apply to a regression dataset (float "
                         f"targets); use: {', '.join(sorted(REGRESSION_LOSSES))}")
    if label_smoothing:
        raise ValueError("loss.label_smoothing applies to classification, not to regression")
    loss = REGRESSION_LOSSES[loss_name]
    return Task(task, loss, loss, {"mae": absolute_error})
