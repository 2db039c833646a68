"""A character-level LSTM on Tiny Shakespeare: 2 layers of 512 units, context 256.

    descent data prepare tiny_shakespeare --manual-dir DIR_WITH_input.txt   # once; pip install -e '.[tf]'
    descent train --config experiments/configs/shakespeare_lstm.py --workdir runs/lstm
    descent sample --workdir runs/lstm --prompt "ROMEO:" --length 500

`--config.model.name=gru` or `=rnn` swaps the cell and keeps everything else. The full config
is 5,000 steps of 64 windows (Adam 2e-3, warmup then cosine, dropout 0.2, gradients clipped
at 1). Measured here, `:cpu` (a bounded run: 400 steps of 32 windows, 3.3 epochs, on the 2-core CPU
development machine, 2026-11-24): validation loss 1.788 nats/char (46.8 % of next characters
right) in 12 min 4 s wall (2.295, 1.930, 1.809, 1.788 at steps 100-400).
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
    c.model.name = "lstm"
    c.model.layers = 2
    c.model.hidden = 512
    c.model.embed = 128
    c.model.dropout = 0.2
    c.model.dtype = "float32"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.clip_norm = 1.0
    c.steps = 5000
    c.eval_every = 250
    c.eval_split = c.test_split = "validation"  # the text's held-out 10 %; it has no test split
    c.early_stopping.monitor = "eval_loss"
    if variant == "cpu":
        c.dataset.batch_size = 32
        c.steps = 400
        c.optimizer.warmup_steps = 40
        c.eval_every = 100
        c.log_every = 10
    if variant == "tiny":
        c.dataset.context = 32
        c.dataset.batch_size = 16
        c.dataset.eval_batch_size = 512
        c.model.hidden, c.model.embed = 64, 16
        c.model.dropout = 0.0
        c.optimizer.learning_rate = 1e-2
        c.optimizer.warmup_steps = 5
        c.steps = 60
        c.eval_every = 30
        c.log_every = 10
    return c
