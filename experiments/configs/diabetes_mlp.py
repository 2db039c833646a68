"""Regression on real data: disease progression of 442 diabetes patients from 10 measurements
(scikit-learn's bundled `diabetes`; no download).

    descent train --config experiments/configs/diabetes_mlp.py --workdir runs/diabetes

MSE and MAE are in the target's own units (a progression score of 25-346, mean about 150):
test MSE 3,465 and MAE 45.5 with one hidden layer of 32 (2026-11-25), where predicting the
training mean gives about 5,150; a linear model (`--config.model.depth=0
--config.optimizer.learning_rate=0.3`: Adam moves a weight by about the learning rate per step,
so reaching a bias of 150 needs a large one) does as well, 3,389: with 309 patients and 10
measurements there is little curvature to find. `:tiny` is a seconds-long variant for tests.
"""
from experiments.configs.common import base_config, check_variant


VARIANTS = ("tiny",)  # FILE:variant on the command line


def get_config(variant: str = ""):
    check_variant(variant, VARIANTS)
    c = base_config()
    c.dataset.name = "diabetes"
    c.dataset.batch_size = 32
    c.model.name = "mlp"
    c.model.depth = 1
    c.model.width = 32
    c.model.dropout = 0.0
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-2
    c.optimizer.weight_decay = 1e-2
    c.loss.name = "mse"
    c.early_stopping.monitor = "eval_loss"
    c.epochs = 100
    c.eval_every = 45
    c.log_every = 45
    if variant == "tiny":
        c.epochs = 5
        c.eval_every = 0
        c.log_every = 5
    return c
