"""A CIFAR-10 speed recipe after airbench94, aiming at 94 % in <= 5 s on an H100 (unmeasured).

    descent data prepare cifar10 --manual-dir DIR_WITH_cifar-10-binary.tar.gz   # once
    descent train --config experiments/configs/cifar10_speed.py --workdir runs/speed

Meant for one GPU (H100 or A100) or TPU chip. The net (`speednet`: 2x2 conv stem, three
conv-pool-BN-GELU blocks of 64, 256 and 256 channels, logits scaled by 1/9), bfloat16 compute,
batch 1,024, Nesterov SGD, label smoothing 0.2, flip test-time augmentation and the learning
rate and weight decay are airbench94's (Jordan 2024: 94.0 % mean test accuracy in 2.59 s on an
A100), converted to a mean loss. The goal is 94 % mean test accuracy over seeds in <= 5 s of
training on an H100. ACCURACY NOT MEASURED YET: this recipe has not yet been trained on CIFAR-10
itself on a GPU; treat 94 % as a target until a run on CIFAR-10 fills it in here.
Speed, measured on one H200 on synthetic CIFAR-shaped data (2026-12-04, JAX 0.11.2, 5 runs):
the 430 training steps took 2.4-2.75 s (about 170,000 images/s; 2.0 s without the moving
average), compiling 13.6-14.4 s in a fresh process; a whole run, its evaluation and checkpoint
at every epoch included, 11.6-12.2 s wall once compiled.
Where it departs from airbench (each may cost accuracy; the measurement decides): the stem is
learned, not frozen to whiten the images' 2x2 patches; the learning rate warms up from 0 and
decays along a cosine, not linearly; crops translate by up to 4 pixels (data/images.py), not 2;
flips are drawn at random, not alternated by epoch; batch-norm shifts get neither airbench's
64x learning rate nor weight decay; 10 % of train is held out to choose the best checkpoint
(`--config.dataset.validation_fraction=0 --config.eval_split=test` trains on all 50,000,
choosing on test); a moving average of the weights is evaluated beside them, and not used to
choose: on that synthetic data, scored with the raw weights' batch-norm statistics, it ended at
66 % where the raw weights scored 100 %.
`:tiny` runs end to end in seconds on mock data in the tests.
"""
from experiments.configs.common import base_config, check_variant


VARIANTS = ("tiny",)  # FILE:variant on the command line


def get_config(variant: str = ""):
    check_variant(variant, VARIANTS)
    c = base_config()
    c.dataset.name = "cifar10"  # pad-crop-flip augmentation, on the device
    c.dataset.batch_size = 1024
    c.dataset.eval_batch_size = 1000
    c.model.name = "speednet"
    c.model.widths = (64, 256, 256)
    c.model.stem_width = 24         # airbench: 2 x 3 channels x 2 x 2 pixels, its whitening width
    c.model.bn_momentum = 0.6       # running statistics follow the last few batches of a short run
    c.model.logit_scale = 1 / 9     # small initial logits: a gentler start at a high learning rate
    c.model.identity_init = True    # 3x3 convs start by passing their input channels through
    c.model.tta_flip = True         # evaluation averages each image's and its mirror's logits
    c.model.dtype = "bfloat16"      # float32 parameters; use float32 on a CPU (bfloat16 is slower)
    c.optimizer.name = "sgd"
    c.optimizer.nesterov = True
    c.optimizer.momentum = 0.85
    # airbench's 11.5 per 1,024 examples on a summed loss, over its 1024 x (1 + 1 / (1 - 0.85)):
    # 1.5 on descent's mean loss; it scales with --config.dataset.batch_size
    c.optimizer.learning_rate = 1.5
    c.optimizer.reference_batch_size = 1024
    # airbench's 0.0153 decay per step at the peak rate, coupled to the rate: 0.0153 / 11.5
    c.optimizer.weight_decay = 0.0153 / 11.5
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_epochs = 2.0  # airbench warms up over the first 20 % of its steps
    c.optimizer.ema_decay = 0.99     # a half-life of ~70 steps, 1.6 of the ~44 steps per epoch
    c.loss.label_smoothing = 0.2
    c.epochs = 10                    # airbench: 9.9
    c.log_every = 100                # each log point waits for the device: few, in a race
    # the best checkpoint is chosen on dataset.validation_fraction of train; test is scored once
    c.eval_split = "validation"
    c.checkpoint.keep = 1
    if variant == "tiny":
        c.model.widths = (8, 16, 16)
        c.model.stem_width = 8
        c.model.dtype = "float32"
        c.dataset.batch_size = 16
        c.dataset.eval_batch_size = 16
        c.epochs = 2
        c.log_every = 1
    return c
