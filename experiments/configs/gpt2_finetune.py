"""GPT-2 small fine-tuned on your own text, from Hugging Face's weights.

    descent import hf-gpt2 gpt2 --workdir runs/gpt2      # gpt2: a folder as the hub has it
    descent data prepare text mytext --files my.txt --tokenizer gpt2:gpt2
    descent train --config experiments/configs/gpt2_finetune.py --workdir runs/mytext \\
        --config.dataset.path=runs/data/mytext --config.init_from=runs/gpt2
    descent sample --workdir runs/mytext --prompt "Once upon a time"

GPT-2 small's shape (12 layers, 12 heads, width 768, 1,024 positions, 50,257 tokens), so every
array of the import loads; AdamW at 3e-5 after 100 warmup steps, decaying to 0 over 2,000
steps of 8 windows of 1,024 tokens, gradients clipped at 1, GPT-2's dropout of 0.1. Its
result depends on your text, and none is claimed: the tests download nothing, so they have
never fine-tuned GPT-2's own weights. `:tiny` is the 2-layer, width-64 GPT-2 with 64
positions and 300 tokens that tests/test_weights.py builds with transformers.
"""
from experiments.configs.common import base_config, check_variant

VARIANTS = ("tiny",)  # FILE:variant on the command line


def get_config(variant: str = ""):
    check_variant(variant, VARIANTS)
    c = base_config()
    c.dataset.name = "tokens"
    c.dataset.context = 1024
    c.dataset.batch_size = 8
    c.dataset.eval_batch_size = 8
    c.model.name = "gpt"
    c.model.layers, c.model.heads, c.model.width, c.model.context = 12, 12, 768, 1024
    c.model.dropout = 0.1
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 3e-5
    c.optimizer.weight_decay = 0.01
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.clip_norm = 1.0
    c.steps = 2000
    c.eval_every = 250
    c.eval_split = c.test_split = "validation"  # prepared text has no test split
    c.early_stopping.monitor = "eval_loss"
    if variant == "tiny":
        c.dataset.context = 32
        c.dataset.eval_batch_size = 64
        c.model.layers, c.model.heads, c.model.width, c.model.context = 2, 4, 64, 64
        c.optimizer.learning_rate = 1e-2
        c.optimizer.warmup_steps = 5
        c.steps = 40
        c.eval_every = 20
        c.log_every = 5
    return c
