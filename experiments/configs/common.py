"""The one config shape every experiment shares (docs/design.md, 11); experiments fill it in."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = ""
    c.dataset.data_dir = ""          # where prepared datasets live ("" = the library default)
    c.dataset.split_seed = 0         # fixes how datasets without a standard split are split
    c.dataset.batch_size = 128       # global, over all devices and processes
    c.dataset.eval_batch_size = 256
    c.dataset.train_examples = 0     # if > 0, train on this many (stratified, by split_seed)
    c.dataset.on_device = True       # in-memory data: kept on the devices, batches read there
    # Each dataset takes the fields it uses (`data.options(name)`) and
    # ignores the rest; one named on the command line that it does not take is an error.
    c.dataset.path = ""              # arrays (.npz), image_folder (a folder), csv (a file)
    c.dataset.target = ""            # csv: the column to predict ("" = the last)
    c.dataset.image_size = 0         # image_folder: resize to N x N (0 = as the images are)
    c.dataset.grayscale = False      # image_folder: decode as grey instead of RGB
    c.dataset.max_in_memory_mb = 1024  # image_folder: larger folders are read per example
    c.dataset.validation_fraction = 0.1  # of train, held out where the data has no such split
    c.dataset.test_fraction = 0.2    # of all, held out where the data has no test split

    c.model = ml_collections.ConfigDict()
    c.model.name = ""                # the net's own fields are added by each experiment
    c.model.dtype = "float32"        # every net takes it: bfloat16 computes in bfloat16

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"        # sgd | adam | adamw | rmsprop
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9       # sgd and rmsprop; 0 turns it off
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 0.0   # decoupled for adamw, L2 otherwise; never on biases/norms
    c.optimizer.schedule = "constant"  # constant | warmup_cosine | step
    c.optimizer.warmup_steps = 0
    c.optimizer.warmup_epochs = 0.0  # used when warmup_steps is 0: follows the batch size
    c.optimizer.reference_batch_size = 0  # if > 0, learning_rate is for this batch size and
                                          # scales linearly with dataset.batch_size
    c.optimizer.decay_every = 0      # schedule=step: multiply by decay_factor every N steps
    c.optimizer.decay_factor = 0.1
    c.optimizer.clip_norm = 0.0      # global-norm gradient clipping; 0 turns it off
    c.optimizer.accumulate_steps = 1  # k > 1: each update averages the gradients of k
                                      # micro-batches of batch_size / k, one at a time
    c.optimizer.ema_decay = 0.0      # d > 0: also keep a moving average of the weights (e.g.
                                     # 0.999), evaluated beside them

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "cross_entropy"    # cross_entropy | binary_cross_entropy | mse (regression: mse)
    c.loss.label_smoothing = 0.0

    c.epochs = 10
    c.steps = 0                      # if > 0, overrides epochs
    c.eval_every = 0                 # steps; 0 = once per epoch
    c.eval_split = "validation"      # what evaluation during training (and early stopping) sees
    c.test_split = "test"            # what the best checkpoint is finally evaluated on
    c.log_every = 50                 # steps between fetching train metrics from the device

    c.log = ml_collections.ConfigDict()
    c.log.layer_grad_norms = False   # also record the gradient norm of every parameter array
    c.log.tensorboard = True         # TensorBoard event files in <workdir>/tensorboard/

    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = 0         # N > 0: a jax.profiler trace of steps N .. N+num_steps-1
    c.profile.num_steps = 3          # into <workdir>/profile

    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.patience = 0    # evaluations without improvement; 0 turns it off
    c.early_stopping.monitor = "eval_accuracy"  # or eval_loss (eval_ema_* for the moving
                                     # average); also ranks the best checkpoints and picks the
                                     # weights the test scores

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 0           # steps; 0 = at every evaluation
    c.checkpoint.keep = 3            # the latest N
    c.checkpoint.keep_best = 1       # and the best M by early_stopping.monitor

    c.parallel = ml_collections.ConfigDict()
    c.parallel.strategy = "dp"
    c.parallel.mesh = "data=-1"      # axis=size pairs; -1 takes the remaining devices
    return c


def check_variant(variant: str, known: tuple[str, ...]) -> None:
    if variant and variant not in known:
        raise ValueError(f"unknown config variant {variant!r}; known: {', '.join(known)}")
