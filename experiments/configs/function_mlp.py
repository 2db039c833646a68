"""Regression: an MLP fits a known curve, y = sin(pi x) + 0.5 sin(4 pi x) on [-1, 1].

    descent train --config experiments/configs/function_mlp.py --workdir runs/function

Trains on 1,400 points with MSE and reports test MSE and MAE against the curve itself: 0.00049
and 0.0096 with 3 hidden ReLU layers of 64 (2,100 steps, about 10 s on 2 CPU cores; the curve's
own variance is 0.6). `--config.dataset.function=ripple` fits a 2-D surface instead (test MSE
0.00013); `--config.model.depth=0` is the linear model, which cannot bend (0.385). Measured
2026-11-25. `:tiny` is a seconds-long variant for tests.
"""
from experiments.configs.common import base_config, check_variant


VARIANTS = ("tiny",)  # FILE:variant on the command line


def get_config(variant: str = ""):
    check_variant(variant, VARIANTS)
    c = base_config()
    c.dataset.name = "function"
    c.dataset.function = "wave"
    c.dataset.num_examples = 2000
    c.dataset.noise = 0.0
    c.dataset.batch_size = 64
    c.model.name = "mlp"
    c.model.depth = 3
    c.model.width = 64
    c.model.activation = "relu"
    c.model.dropout = 0.0
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 50
    c.loss.name = "mse"
    c.early_stopping.monitor = "eval_loss"
    c.epochs = 100
    c.eval_every = 220
    if variant == "tiny":
        c.epochs = 5
        c.eval_every = 0
        c.log_every = 10
    return c
