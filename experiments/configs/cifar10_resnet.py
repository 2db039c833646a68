"""ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool) on CIFAR-10.

    descent data prepare cifar10 --manual-dir DIR_WITH_cifar-10-binary.tar.gz   # once
    descent train --config experiments/configs/cifar10_resnet.py --workdir runs/cifar10

The usual recipe: SGD with Nesterov momentum 0.9, learning rate 0.1 for batch 128 with a
1-epoch warmup then cosine decay, weight decay 5e-4 (not on biases and norms), pad-crop-flip
augmentation, 200 epochs. On one GPU that is about 95 % test accuracy (the published figure for
this recipe); not measured here: this machine has no GPU and no copy of CIFAR-10, and one epoch
of this 11M-parameter net on its 2-core CPU would take hours. `--config.model.name=resnet50`
swaps the depth; `--config.model.dtype=bfloat16` computes in bfloat16 on an accelerator.
`:tiny` runs end to end in seconds on mock data in the tests.
"""
from experiments.configs.common import base_config, check_variant


VARIANTS = ("tiny",)  # FILE:variant on the command line


def get_config(variant: str = ""):
    check_variant(variant, VARIANTS)
    c = base_config()
    c.dataset.name = "cifar10"
    c.dataset.batch_size = 128
    c.dataset.eval_batch_size = 1000
    c.model.name = "resnet18"
    c.model.stem = "cifar"
    c.model.width = 64
    c.model.zero_init_residual = False
    c.model.dtype = "float32"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_epochs = 1.0
    c.epochs = 200
    # the best checkpoint is chosen on dataset.validation_fraction of train; test is scored once
    c.eval_split = "validation"
    if variant == "tiny":
        c.model.width = 8
        c.dataset.batch_size = 16
        c.dataset.eval_batch_size = 16
        c.epochs = 1
        c.log_every = 1
    return c
