"""Optimizers and learning-rate schedules by name, composed from plain optax."""
import fnmatch

import jax
import optax

from train.state import named


def constant(learning_rate, **_):
    return optax.constant_schedule(learning_rate)


def warmup_cosine(learning_rate, *, total_steps, warmup_steps, **_):
    """Linear warmup from 0 over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)


def step_decay(learning_rate, *, decay_every, decay_factor, **_):
    """learning_rate * decay_factor ** (step // decay_every)."""
    if decay_every <= 0:
        raise ValueError("optimizer.schedule='step' needs optimizer.decay_every > 0 (in steps)")
    return optax.exponential_decay(learning_rate, decay_every, decay_factor, staircase=True)


SCHEDULES = {"constant": constant, "warmup_cosine": warmup_cosine, "step": step_decay}


def sgd(lr, cfg):
    return optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)


def adam(lr, cfg):
    return optax.adam(lr)


def adamw(lr, cfg):
    # Decoupled weight decay, masked so biases and norm scales are not decayed.
    return optax.adamw(lr, weight_decay=cfg.weight_decay, mask=decay_mask)


def rmsprop(lr, cfg):
    return optax.rmsprop(lr, momentum=cfg.momentum)


OPTIMIZERS = {"sgd": sgd, "adam": adam, "adamw": adamw, "rmsprop": rmsprop}


def decay_mask(params):
    """True for weight matrices and kernels; False for biases and norm scales (1-d arrays)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rate_schedule(cfg, total_steps: int, steps_per_epoch: int = 0,
                           batch_size: int = 0) -> optax.Schedule:
    """The schedule named by `cfg.schedule` for `cfg.learning_rate` (the optimizer config).

    Warmup lasts `cfg.warmup_steps`, or if that is 0, `cfg.warmup_epochs` epochs. With
    `cfg.reference_batch_size`, the learning rate is the one for that batch size and scales
    linearly to `batch_size` (Goyal et al. 2017: lr 0.1 per 256 examples for ResNet-50).
    """
    if cfg.schedule not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {cfg.schedule!r}; known: {', '.join(sorted(SCHEDULES))}")
    warmup_steps = cfg.warmup_steps or round(cfg.warmup_epochs * steps_per_epoch)
    learning_rate = cfg.learning_rate
    if cfg.reference_batch_size:
        learning_rate *= batch_size / cfg.reference_batch_size
    return SCHEDULES[cfg.schedule](
        learning_rate, total_steps=total_steps, warmup_steps=warmup_steps,
        decay_every=cfg.decay_every, decay_factor=cfg.decay_factor)


def freeze_patterns(freeze: str) -> list[str]:
    """`optimizer.freeze` ("blocks/0/*,embed/*") -> its patterns."""
    return [p.strip() for p in freeze.split(",") if p.strip()]


def frozen_labels(patterns: list[str]):
    """For `optax.multi_transform`: labels each parameter array "frozen" when its name
    (`blocks/0/attention/qkv/kernel`) matches one of `patterns` (shell-style: `*` matches
    across `/` too), "trained" otherwise. A pattern that matches no parameter raises
    ValueError: a typo would otherwise train what was meant to stay fixed."""
    def labels(params):
        names = list(named(params))
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ValueError(f"optimizer.freeze pattern {pattern!r} matches no parameter of "
                                 f"this model; its {len(names)} parameter arrays are named like "
                                 f"{shown}")
        marks = ["frozen" if any(fnmatch.fnmatchcase(name, p) for p in patterns) else "trained"
                 for name in names]
        return jax.tree.unflatten(jax.tree.structure(params), marks)

    return labels


def frozen_size(params, freeze: str) -> int:
    """How many of `params`' numbers `optimizer.freeze` keeps as they are."""
    patterns = freeze_patterns(freeze)
    return sum(leaf.size for name, leaf in named(params).items()
               if any(fnmatch.fnmatchcase(name, p) for p in patterns))


def make_optimizer(cfg, total_steps: int, steps_per_epoch: int = 0, batch_size: int = 0
                   ) -> optax.GradientTransformation:
    """optax chain: [clip by global norm] -> [L2 weight decay] -> optimizer with its schedule;
    with `cfg.freeze`, applied only to the parameters it does not name, the others' updates
    zero (`optax.multi_transform`), so they stay exactly as they started.

    Weight decay is coupled (added to the gradient, masked like adamw's) for every optimizer
    but adamw, whose decay is decoupled inside it. Clipping measures the gradient of the
    trained parameters alone.
    """
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.name!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.weight_decay and cfg.name != "adamw":
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(OPTIMIZERS[cfg.name](
        learning_rate_schedule(cfg, total_steps, steps_per_epoch, batch_size), cfg))
    tx = optax.chain(*parts)
    patterns = freeze_patterns(cfg.freeze)
    if not patterns:
        return tx
    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                                 frozen_labels(patterns))
