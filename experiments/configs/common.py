"""The one config shape every experiment shares (docs/design.md, 11), and the one home of its
defaults: each row of `DEFAULTS` is a key, its default, and the values a run can use.

A config file starts from `base_config()` and sets what its experiment changes. The `model`
group is the exception: its fields and their defaults are the chosen net's constructor's
(`nets.fields`), filled in when the config is loaded (`experiments.config.load_config`).
"""
import math
from typing import NamedTuple

import ml_collections


class Range(NamedTuple):
    """The numbers a field may take: from `low` (itself allowed if `low_allowed`) up to, not
    including, `high` (None: no upper end)."""
    low: float
    low_allowed: bool = True
    high: float | None = None

    def refuses(self, value) -> bool:
        return not math.isfinite(value) or value < self.low or (
            value == self.low and not self.low_allowed) or (
            self.high is not None and value >= self.high)

    def __str__(self) -> str:
        lower = f"at least {self.low}" if self.low_allowed else f"above {self.low}"
        return lower + (f" and below {self.high}" if self.high is not None else "")


# Every integer of a config is below this: JAX computes in 32 bits unless told otherwise, so the
# step counter is an int32 (a run of 2**31 steps would wrap it) and a seed of 2**32 or more is
# cut silently to another one (`jax.random.PRNGKey(2**40)` is the key of seed 0).
INT_LIMIT = 2**31

COUNT = Range(1)          # a batch, an interval between logs: one or more
NON_NEGATIVE = Range(0)   # 0 is allowed, and usually means "off" or "the default"
POSITIVE = Range(0, low_allowed=False)
FRACTION = Range(0, high=1)

DEFAULTS = (
    # key, default, allowed values (None: any value of the default's type)
    ("seed", 0, NON_NEGATIVE),

    ("dataset.name", "", None),
    ("dataset.data_dir", "", None),             # where prepared datasets live ("": the default)
    ("dataset.split_seed", 0, NON_NEGATIVE),    # how datasets without a standard split split
    ("dataset.batch_size", 128, COUNT),         # global, over all devices and processes
    ("dataset.eval_batch_size", 256, COUNT),
    ("dataset.train_examples", 0, NON_NEGATIVE),  # > 0: train on this many (stratified)
    ("dataset.on_device", True, None),          # in-memory data: kept on the devices
    # Each dataset takes the fields it uses (`data.options(name)`) and ignores the rest; one
    # named on the command line that it does not take is an error.
    ("dataset.path", "", None),                 # arrays (.npz), image_folder (a folder), csv
    ("dataset.target", "", None),               # csv: the column to predict ("": the last)
    ("dataset.standardize", True, None),        # arrays, csv: float features standardised by
                                                # the training split's mean and std per feature
    ("dataset.image_size", 0, NON_NEGATIVE),    # image_folder: resize to N x N (0: as they are)
    ("dataset.grayscale", False, None),         # image_folder: decode as grey instead of RGB
    ("dataset.max_in_memory_mb", 1024, NON_NEGATIVE),  # image_folder: larger ones are read
                                                # per example
    ("dataset.validation_fraction", 0.1, FRACTION),  # of train, where the data has no such split
    ("dataset.test_fraction", 0.2, FRACTION),   # of all, where the data has no test split

    ("model.name", "", None),                   # a net of nets.NETS; its fields come with it
    ("init_from", "", None),                    # WORKDIR[:STEP]: a fresh run starts from the
                                                # parameters of that run's checkpoint (best,
                                                # latest or a step; default best) that fit

    ("optimizer.name", "adam", None),           # sgd | adam | adamw | rmsprop
    ("optimizer.learning_rate", 1e-3, POSITIVE),
    ("optimizer.momentum", 0.9, FRACTION),      # sgd and rmsprop; 0 turns it off
    ("optimizer.nesterov", False, None),
    ("optimizer.weight_decay", 0.0, NON_NEGATIVE),  # decoupled for adamw, L2 otherwise; never
                                                # on biases or norms
    ("optimizer.schedule", "constant", None),   # constant | warmup_cosine | step
    ("optimizer.warmup_steps", 0, NON_NEGATIVE),
    ("optimizer.warmup_epochs", 0.0, NON_NEGATIVE),  # when warmup_steps is 0: follows the batch
    ("optimizer.reference_batch_size", 0, NON_NEGATIVE),  # > 0: learning_rate is for this batch
                                                # size, scaled linearly to dataset.batch_size
    ("optimizer.decay_every", 0, NON_NEGATIVE),  # schedule=step: x decay_factor every N steps
    ("optimizer.decay_factor", 0.1, POSITIVE),
    ("optimizer.clip_norm", 0.0, NON_NEGATIVE),  # global-norm gradient clipping; 0: off
    ("optimizer.accumulate_steps", 1, COUNT),   # k > 1: each update averages the gradients of
                                                # k micro-batches of batch_size / k, in turn
    ("optimizer.ema_decay", 0.0, FRACTION),     # d > 0: also keep a moving average of the
                                                # weights (e.g. 0.999), evaluated beside them
    ("optimizer.freeze", "", None),             # parameter names kept as they start, e.g.
                                                # "blocks/*,stem_*" (shell patterns)

    ("loss.name", "cross_entropy", None),       # cross_entropy | binary_cross_entropy | mse
    ("loss.label_smoothing", 0.0, FRACTION),
    ("loss.chunk", 0, NON_NEGATIVE),            # > 0: a language model's logits are made this
                                                # many positions at a time, never all at once

    ("epochs", 10, None),                       # at least 1 unless steps is set (check_values)
    ("steps", 0, NON_NEGATIVE),                 # > 0: overrides epochs
    ("eval_every", 0, NON_NEGATIVE),            # steps; 0: once per epoch
    ("eval_split", "validation", None),         # what evaluation during training sees
    ("test_split", "test", None),               # what the best checkpoint is finally scored on
    ("log_every", 50, COUNT),                   # steps between fetching train metrics

    ("log.layer_grad_norms", False, None),      # also record every parameter array's grad norm
    ("log.tensorboard", True, None),            # TensorBoard event files in <workdir>/tensorboard
    ("log.curves", True, None),                 # curves.png in <workdir> at the end of a run
    ("log.trackers", "", None),                 # experiment trackers, e.g. "wandb,mlflow"
    ("log.project", "descent", None),           # their project (W&B) or experiment (MLflow)
    ("compile_cache", "~/.cache/descent/jax", None),  # JAX's persistent cache; '' turns it off

    ("profile.start_step", 0, NON_NEGATIVE),    # N > 0: a jax.profiler trace of steps
    ("profile.num_steps", 3, COUNT),            # N .. N + num_steps - 1 into <workdir>/profile

    ("early_stopping.patience", 0, NON_NEGATIVE),  # evaluations without improvement; 0: off
    ("early_stopping.monitor", "eval_accuracy", None),  # or eval_loss (eval_ema_* for the
                                                # moving average); also ranks the best
                                                # checkpoints and picks the weights tested

    ("checkpoint.every", 0, NON_NEGATIVE),      # steps; 0: at every evaluation
    ("checkpoint.keep", 3, COUNT),              # the latest N
    ("checkpoint.keep_best", 1, NON_NEGATIVE),  # and the best M by early_stopping.monitor

    ("parallel.strategy", "dp", None),
    ("parallel.mesh", "data=-1", None),         # axis=size pairs over data, fsdp, tensor; -1
                                                # takes the remaining devices
    ("parallel.rules", "", None),               # NAME=AXIS,...: where the nets' dimension names
                                                # go, over train/sharding.py's RULES
)

# The nets' own fields have their defaults in the nets' constructors; these are the values a
# run can use of those that several nets share.
MODEL_RANGES = {"dropout": FRACTION}


def base_config() -> ml_collections.ConfigDict:
    """Every field of `DEFAULTS` at its default; `model` holds only `name` until a net is
    chosen."""
    config = ml_collections.ConfigDict()
    for key, default, _ in DEFAULTS:
        *groups, leaf = key.split(".")
        node = config
        for group in groups:
            if group not in node:
                node[group] = ml_collections.ConfigDict()
            node = node[group]
        node[leaf] = default
    return config


def check_variant(variant: str, known: tuple[str, ...]) -> None:
    if variant and variant not in known:
        raise ValueError(f"unknown config variant {variant!r}; known: {', '.join(known)}")
