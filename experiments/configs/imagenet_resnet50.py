"""ResNet-50 v1.5 on ImageNet (ILSVRC 2012), the standard 90-epoch recipe.

    descent data prepare imagenet2012 --manual-dir DIR_WITH_ILSVRC2012_img_{train,val}.tar
    descent train --config experiments/configs/imagenet_resnet50.py --workdir runs/in1k

SGD with momentum 0.9; learning rate 0.1 x batch/256 (0.4 at the batch of 1,024 here; it
follows `--config.dataset.batch_size`), 5 warmup epochs then cosine decay to 0; weight decay 1e-4 on weights only (not
on batch-norm parameters or biases); label smoothing 0.1; the last batch norm of each residual
block starts at 0; 224x224 random-resized crops with flips, centre crops for evaluation;
bfloat16 compute with float32 parameters (for accelerators: bfloat16 is slower than float32 on
CPUs). This recipe reaches about 76.5-77 % top-1 on the validation split on 8 GPUs or a TPU
slice (the published figures for ResNet-50 v1.5 with label smoothing and a cosine schedule);
not measured here: this machine has no accelerator and no copy of ImageNet.
Use `--config.dataset.worker_count=N` to decode with N processes.
`:tiny` runs end to end in seconds on mock data in the tests.
"""
from experiments.configs.common import base_config, check_variant


VARIANTS = ("tiny",)  # FILE:variant on the command line


def get_config(variant: str = ""):
    check_variant(variant, VARIANTS)
    c = base_config()
    c.dataset.name = "imagenet2012"
    c.dataset.image_size = 224
    c.dataset.worker_count = 0
    c.dataset.batch_size = 1024
    c.dataset.eval_batch_size = 1000
    c.model.name = "resnet50"
    c.model.stem = "imagenet"
    c.model.width = 64
    c.model.zero_init_residual = True
    c.model.dtype = "bfloat16"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.reference_batch_size = 256  # lr 0.1 per 256 examples: 0.4 at 1,024
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_epochs = 5.0
    c.loss.label_smoothing = 0.1
    c.epochs = 90
    c.eval_split = c.test_split = "validation"  # ImageNet's labelled held-out split
    c.checkpoint.keep = 2
    if variant == "tiny":
        c.dataset.image_size = 32
        c.dataset.batch_size = 16
        c.dataset.eval_batch_size = 16
        c.model.width = 8
        c.epochs = 1
        c.log_every = 1
    return c
