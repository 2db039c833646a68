"""A character-level GPT on Tiny Shakespeare: 6 layers, 6 heads, width 384, context 256.

    descent data prepare tiny_shakespeare --manual-dir DIR_WITH_input.txt   # once; pip install -e '.[tf]'
    descent train --config experiments/configs/shakespeare_gpt.py --workdir runs/gpt
    descent sample --workdir runs/gpt --prompt "ROMEO:" --length 500

The full config (5,000 steps of 64 windows, AdamW 1e-3, warmup then cosine, dropout 0.2) is the
shape that reaches about 1.47 nats/char of validation loss on one GPU in a few thousand steps.
Measured here, `:cpu` (a bounded run: 400 steps of 16 windows, 1.6 epochs, on the 2-core CPU
development machine, 2026-11-24): validation loss 2.291 nats/char (32.5 % of next characters
right) in 27 min 52 s wall, other work sharing the cores; the loss was still falling (2.510,
2.461, 2.333, 2.291 at steps 100-400). In a CPU budget like this the LSTM of
shakespeare_lstm.py gets further (1.79 in 12 minutes): its steps are cheaper.
`:tiny` is a seconds-long variant for tests.
"""
from experiments.configs.common import base_config, check_variant


VARIANTS = ("cpu", "tiny")  # FILE:variant on the command line


def get_config(variant: str = ""):
    check_variant(variant, VARIANTS)
    c = base_config()
    c.dataset.name = "tiny_shakespeare"
    c.dataset.context = 256
    c.dataset.batch_size = 64
    c.dataset.eval_batch_size = 64
    c.model.name = "gpt"
    c.model.layers = 6
    c.model.heads = 6
    c.model.width = 384
    c.model.context = 0  # positions for as many characters as dataset.context
    c.model.dropout = 0.2
    c.model.dtype = "float32"
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.1
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.clip_norm = 1.0
    c.steps = 5000
    c.eval_every = 250
    c.eval_split = c.test_split = "validation"  # the text's held-out 10 %; it has no test split
    c.early_stopping.monitor = "eval_loss"
    if variant == "cpu":
        c.dataset.batch_size = 16
        c.steps = 400
        c.optimizer.warmup_steps = 40
        c.eval_every = 100
        c.log_every = 10
    if variant == "tiny":
        c.dataset.context = 32
        c.dataset.batch_size = 16
        c.dataset.eval_batch_size = 512
        c.model.layers, c.model.heads, c.model.width = 2, 2, 64
        c.model.dropout = 0.0
        c.optimizer.learning_rate = 3e-3
        c.optimizer.warmup_steps = 10
        c.steps = 60
        c.eval_every = 30
        c.log_every = 10
    return c
