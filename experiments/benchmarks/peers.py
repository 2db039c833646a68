"""One MNIST epoch in descent and in its peers, side by side, in one run.

    python -m experiments.benchmarks.peers [--nets mlp,cnn] [--repeats 5] [--steps 468]
        [--variants bare,keras,nnx,torch,trainer,fit[,fit_host]]
        [--data-dir DIR] [--torch-python PATH]
        [--torch-threads N] [--out results.json] [--quick]

The same two nets (MLP 784-512-512-10; CNN conv32-pool-conv64-pool-dense128, ReLU, 3x3 SAME
convolutions, 2x2 max-pool) trained with Adam 1e-3 on batches of 128 float32 images held in
memory, no dropout, in six ways (a seventh on request):

- `bare`: `jax.jit` of value_and_grad + `optax.adam` + `apply_updates` over a plain pytree of
  parameters, batches `jax.device_put` one by one (the CNN pools by reshape-max like
  `nets/cnn.py`);
- `keras`: Keras 3 on the JAX backend, `model.fit` over the numpy arrays (skipped, with a note,
  where keras is not importable);
- `nnx`: flax NNX as its docs write it: `nnx.Module`, `nnx.Optimizer(model, tx, wrt=nnx.Param)`,
  an `@nnx.jit` step calling `opt.update(model, grads)`;
- `torch`: PyTorch eager, in the Python of `--torch-python` (default: build/torchvenv's, where it
  exists; torch is never a dependency of descent), with torch's own thread count unless
  `--torch-threads N` (on a busy machine its spinning threads can cost it 5x: say which was used);
- `trainer`: descent's `Trainer` (`experiments.run.build` + `train.trainer.Trainer`), its
  compiled `train_step` driven by a bare loop with `trainer.put(batch)` every step;
- `fit`: descent's `train_and_evaluate` as a user runs it (the training split on the device,
  records every `log_every` steps, metrics.jsonl, TensorBoard, the progress bar kept off);
- `fit_host` (only when named in `--variants`): the same with `dataset.on_device=false`, each
  batch gathered on the host and sent to the step, as datasets not held in memory run.

Timed: in the hand-driven loops (bare, nnx, trainer, torch), steps 2 .. steps+1, from the end
of the first step (compiled and synchronised) to the end of the last (synchronised); in
`keras`, the wall time of a second `model.fit` over `steps` batches after a first one-batch
`fit` has compiled; in `fit`, the time between the records `train_and_evaluate` writes after
step 1 and after the last logged step before the final evaluation (`time` in metrics.jsonl),
over the steps between them. Every time is scaled to seconds per epoch of 468 steps.

Every variant runs in a fresh subprocess, the variants interleaved `--repeats` times; the JAX
ones count XLA compilations after the first step (`jax.monitoring`'s backend compile events),
which must be 0. The f32 matmul peak (`jnp.dot`, and `torch.mm` where torch is) is measured in
the same run. Data: the real MNIST training images if `--data-dir` holds MNIST prepared by
tfds (`descent data prepare mnist`), else random MNIST-shaped arrays (speed does not depend on
the pixel values).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# Imports of jax, numpy and descent stay inside the functions: the torch worker runs this file
# in another Python that has torch but none of them.

EPOCH_STEPS, BATCH, LR = 468, 128, 1e-3
NETS = {"mlp": "MLP 784-512-512-10", "cnn": "CNN conv32-pool-conv64-pool-dense128"}
VARIANTS = {"bare": "bare JAX (jit + optax)", "keras": "Keras 3 (JAX)",
            "nnx": "flax NNX (`nnx.jit`)", "torch": "PyTorch eager",
            "trainer": "descent: Trainer step", "fit": "descent: `train_and_evaluate`",
            "fit_host": "descent: `train_and_evaluate`, host batches"}
DEFAULT_VARIANTS = ("bare", "keras", "nnx", "torch", "trainer", "fit")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_TORCH = os.path.join(ROOT, "build", "torchvenv", "bin", "python")
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


# --- the workers: each runs in its own process and prints one JSON line

def read_data(path: str):
    """(inputs Nx28x28x1 float32, labels N int32) from the raw files the parent wrote."""
    import numpy as np
    x = np.fromfile(path + ".x", np.float32).reshape(-1, 28, 28, 1)
    y = np.fromfile(path + ".y", np.int32)
    return x, y


def compile_counter():
    """A list that grows by one at every XLA compilation from now on."""
    import jax
    seen = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _secs, **_: seen.append(event) if event == BACKEND_COMPILE else None)
    return seen


def batch_at(x, y, step: int):
    i = step % (len(x) // BATCH) * BATCH
    return x[i:i + BATCH], y[i:i + BATCH]


def run_bare(net: str, data: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    x, y = read_data(data)
    key = iter(jax.random.split(jax.random.PRNGKey(0), 8))

    def dense(n_in, n_out):
        w = jax.random.normal(next(key), (n_in, n_out)) / np.sqrt(n_in)
        return {"w": w, "b": jnp.zeros(n_out)}

    def conv(c_in, c_out):
        w = jax.random.normal(next(key), (3, 3, c_in, c_out)) / np.sqrt(9 * c_in)
        return {"w": w, "b": jnp.zeros(c_out)}

    def pool(x_BxHxWxC):
        b, h, w, c = x_BxHxWxC.shape
        return x_BxHxWxC.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    if net == "mlp":
        params = [dense(784, 512), dense(512, 512), dense(512, 10)]

        def apply(params, x):
            h = x.reshape(x.shape[0], -1)
            for layer in params[:-1]:
                h = jax.nn.relu(h @ layer["w"] + layer["b"])
            return h @ params[-1]["w"] + params[-1]["b"]
    else:
        params = [conv(1, 32), conv(32, 64), dense(7 * 7 * 64, 128), dense(128, 10)]

        def apply(params, x):
            h = x
            for layer in params[:2]:
                h = jax.lax.conv_general_dilated(h, layer["w"], (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                h = pool(jax.nn.relu(h + layer["b"]))
            h = jax.nn.relu(h.reshape(h.shape[0], -1) @ params[2]["w"] + params[2]["b"])
            return h @ params[3]["w"] + params[3]["b"]

    tx = optax.adam(LR)

    def loss_of(params, inputs, labels):
        return optax.softmax_cross_entropy_with_integer_labels(apply(params, inputs),
                                                               labels).mean()

    @jax.jit
    def step(params, opt_state, inputs, labels):
        loss, grads = jax.value_and_grad(loss_of)(params, inputs, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)

    def one(i):
        nonlocal params, opt_state
        inputs, labels = jax.device_put(batch_at(x, y, i))
        params, opt_state, loss = step(params, opt_state, inputs, labels)
        return loss

    return time_loop(one, steps, jax.block_until_ready)


def run_nnx(net: str, data: str, steps: int) -> dict:
    import jax
    import optax
    from flax import nnx

    x, y = read_data(data)

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(784, 512, rngs=rngs)
            self.l2 = nnx.Linear(512, 512, rngs=rngs)
            self.l3 = nnx.Linear(512, 10, rngs=rngs)

        def __call__(self, x):
            x = x.reshape(x.shape[0], -1)
            return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
            self.c2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
            self.d1 = nnx.Linear(7 * 7 * 64, 128, rngs=rngs)
            self.d2 = nnx.Linear(128, 10, rngs=rngs)

        def __call__(self, x):
            pool = lambda h: nnx.max_pool(h, (2, 2), (2, 2))  # as flax's docs write it
            x = pool(nnx.relu(self.c2(pool(nnx.relu(self.c1(x))))))
            return self.d2(nnx.relu(self.d1(x.reshape(x.shape[0], -1))))

    model = (MLP if net == "mlp" else CNN)(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, inputs, labels):
        def loss_of(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(inputs), labels).mean()
        loss, grads = nnx.value_and_grad(loss_of)(model)
        opt.update(model, grads)
        return loss

    def one(i):
        return step(model, opt, *batch_at(x, y, i))

    return time_loop(one, steps, jax.block_until_ready)


def run_trainer(net: str, data: str, steps: int) -> dict:
    import jax
    from experiments import run
    from train.trainer import Trainer

    config, dataset = descent_setup(net, data)
    model, _ = run.build(config, dataset)
    trainer = Trainer(config, model, dataset)
    state = trainer.initial_state
    x, y = dataset.splits["train"]["inputs"], dataset.splits["train"]["targets"]

    def one(i):
        nonlocal state
        inputs, labels = batch_at(x, y, i)
        state, metrics = trainer.train_step(state, trainer.put({"inputs": inputs,
                                                                "targets": labels}))
        return metrics

    return time_loop(one, steps, jax.block_until_ready)


def run_fit(net: str, data: str, steps: int, on_device: bool = True) -> dict:
    from experiments import run

    config, dataset = descent_setup(net, data)
    config.dataset.on_device = on_device
    # steps 2 .. timed_end are timed: the last logging point before the final evaluation
    config.steps = steps + 1
    config.log_every = min(config.log_every, steps)
    config.eval_every = config.checkpoint.every = config.steps
    timed_end = steps // config.log_every * config.log_every
    at, compiles_at, compiles = {}, {}, compile_counter()

    def clock(record):  # a writer: receives every record the run writes to metrics.jsonl
        if "train_loss" in record:
            at[record["step"]] = time.perf_counter()
            compiles_at[record["step"]] = len(compiles)

    with tempfile.TemporaryDirectory() as workdir:
        run.train_and_evaluate(config, workdir, console=False, writers=[clock],
                               dataset=dataset)
    # like every worker's: the seconds of the `steps_timed` steps timed (the parent scales)
    return {"seconds": at[timed_end] - at[1], "steps_timed": timed_end - 1,
            "recompiles": compiles_at[timed_end] - compiles_at[1]}


def descent_setup(net: str, data: str):
    """The shipped config of `net` with the peers' settings: MNIST-shaped arrays, batch 128,
    Adam 1e-3 constant, no dropout, one CPU/accelerator device."""
    import numpy as np
    import data as datasets
    from experiments.config import load_config

    name = "mnist_cnn" if net == "cnn" else "digits_mlp"
    config = load_config(os.path.join(ROOT, "experiments", "configs", f"{name}.py"))
    config.dataset.name = "arrays"
    config.dataset.batch_size = BATCH
    config.dataset.eval_batch_size = 500
    config.parallel.mesh = "data=1"
    config.model.dropout = 0.0
    config.loss.label_smoothing = 0.0
    config.optimizer.learning_rate = LR
    config.optimizer.schedule = "constant"
    if net == "mlp":
        config.model.width, config.model.depth = 512, 2
    x, y = read_data(data)
    held = slice(0, 500)  # small evaluation splits: evaluation is not timed
    dataset = datasets.load("arrays", arrays={
        "x_train": x, "y_train": y, "x_validation": x[held], "y_validation": y[held],
        "x_test": x[held], "y_test": y[held]})
    assert dataset.splits["train"]["inputs"].dtype == np.float32
    return config, dataset


def run_keras(net: str, data: str, steps: int) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    from keras import layers

    x, y = read_data(data)
    x, y = x[:steps * BATCH], y[:steps * BATCH]
    if len(x) < steps * BATCH:
        raise ValueError(f"{steps} steps need {steps * BATCH} images, there are {len(x)}")
    if net == "mlp":
        body = [layers.Flatten(), layers.Dense(512, activation="relu"),
                layers.Dense(512, activation="relu"), layers.Dense(10)]
    else:
        body = [layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
                layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
                layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(10)]
    model = keras.Sequential([keras.Input((28, 28, 1)), *body])
    model.compile(optimizer=keras.optimizers.Adam(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, verbose=0)  # compiles
    compiles = compile_counter()
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps_timed": steps, "recompiles": len(compiles),
            "version": keras.__version__}


def run_torch(net: str, data: str, steps: int, threads: int = 0) -> dict:
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)

    def load(suffix, dtype, shape):
        with open(data + suffix, "rb") as f:
            return torch.frombuffer(bytearray(f.read()), dtype=dtype).reshape(shape)

    y = load(".y", torch.int32, (-1,)).long()
    x = load(".x", torch.float32, (len(y), 28, 28, 1)).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(0)
    if net == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                              nn.ReLU(), nn.Linear(512, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(7 * 7 * 64, 128), nn.ReLU(),
                              nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()

    def one(i):
        inputs, labels = batch_at(x, y, i)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        opt.step()
        return loss

    result = time_loop(one, steps, lambda loss: loss.item(), count=False)
    return {**result, "version": torch.__version__, "threads": torch.get_num_threads()}


def time_loop(one, steps: int, sync, count: bool = True) -> dict:
    """Runs `one(i)` for i = 0 .. steps; times steps 2 .. steps+1, after the first (compiled)
    one, each end synchronised with `sync`."""
    compiles = compile_counter() if count else None
    sync(one(0))
    before = len(compiles) if count else None
    start = time.perf_counter()
    for i in range(1, steps + 1):
        out = one(i)
    sync(out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps_timed": steps,
            "recompiles": len(compiles) - before if count else None}


def run_matmul(kind: str) -> dict:
    """The best f32 FLOP/s of an n x n matmul, n = 2,048 on a CPU, 8,192 on an accelerator."""
    if kind == "torch":
        import torch
        n = 2048
        a, b = torch.rand(n, n), torch.rand(n, n)
        mm, sync = torch.mm, lambda c: c.sum().item()
    else:
        import jax
        import jax.numpy as jnp
        n = 2048 if jax.devices()[0].platform == "cpu" else 8192
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n))
        mm = jax.jit(lambda a, b: jnp.dot(a, b, precision="highest"))
        sync = jax.block_until_ready
        sync(mm(a, b))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(3):
            c = mm(a, b)
        sync(c)
        best = min(best, (time.perf_counter() - start) / 3)
    return {"flops_per_s": 2 * n ** 3 / best, "n": n}


WORKERS = {"bare": run_bare, "keras": run_keras, "nnx": run_nnx, "torch": run_torch,
           "trainer": run_trainer, "fit": run_fit,
           "fit_host": lambda net, data, steps: run_fit(net, data, steps, on_device=False)}


def worker(args) -> int:
    if args.worker == "matmul":
        result = run_matmul(args.kind)
    else:
        extra = {"threads": args.torch_threads} if args.worker == "torch" else {}
        result = WORKERS[args.worker](args.net, args.data, args.steps, **extra)
    if args.worker not in ("torch", "matmul") or (args.worker == "matmul" and args.kind == "jax"):
        import jax
        result.setdefault("device", jax.devices()[0].device_kind)
        result.setdefault("jax", jax.__version__)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# --- the parent: interleaves the workers and aggregates

def spawn(python: str, argv: list[str], env=None) -> dict:
    # the torch Python has no descent to import: it runs this file by its path
    cmd = ([python, os.path.abspath(__file__)] if python != sys.executable
           else [python, "-m", "experiments.benchmarks.peers"]) + argv
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0]}"}
    return json.loads(lines[-1][len("RESULT "):])


def write_data(path: str, data_dir: str) -> str:
    """Writes MNIST's training images (or random MNIST-shaped ones) as raw float32/int32 files
    that every worker reads; returns what was written."""
    import numpy as np
    x = y = None
    if data_dir:
        try:
            import data as datasets
            mnist = datasets.load("mnist", data_dir=data_dir)
            train = mnist.splits["train"]
            pixels = np.asarray(train["inputs"])
            x = pixels.astype(np.float32).reshape(-1, 28, 28, 1)
            if pixels.dtype == np.uint8:  # scaled to [0, 1], as descent feeds them
                x /= 255.0
            y = np.asarray(train["targets"], np.int32)
        except Exception as e:  # noqa: BLE001 - any reason MNIST is not there: use random data
            print(f"note: MNIST not read from {data_dir} ({e}); using random MNIST-shaped data",
                  file=sys.stderr)
            x = None
    if x is None:
        rng = np.random.default_rng(0)
        x = rng.random((EPOCH_STEPS * BATCH, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 10, EPOCH_STEPS * BATCH, dtype=np.int32)
        what = (f"random MNIST-shaped float32 arrays ({len(x):,} images; speed does not depend "
                f"on the pixel values)")
    else:
        what = f"MNIST's training images from {data_dir} ({len(x):,}, as float32)"
    x.astype(np.float32).tofile(path + ".x")
    y.astype(np.int32).tofile(path + ".y")
    return what


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", default="mlp,cnn")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=EPOCH_STEPS)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--torch-python", default=DEFAULT_TORCH if os.path.exists(DEFAULT_TORCH)
                        else "")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads (default: torch's own choice, one per core)")
    parser.add_argument("--out", default="")
    parser.add_argument("--quick", action="store_true",
                        help="3 steps, 1 repeat: a check that every variant runs")
    parser.error = lambda message: _refuse(message)  # one line, exit 2
    # the worker's side, not for users
    parser.add_argument("--worker", choices=[*WORKERS, "matmul"], help=argparse.SUPPRESS)
    parser.add_argument("--net", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 3, 1
    nets, variants = args.nets.split(","), args.variants.split(",")
    problems = [f"--nets: unknown {n!r} (known: {', '.join(NETS)})" for n in nets if n not in NETS]
    problems += [f"--variants: unknown {v!r} (known: {', '.join(VARIANTS)})"
                 for v in variants if v not in VARIANTS]
    if args.torch_threads < 0:
        problems.append(f"--torch-threads must be >= 0, got {args.torch_threads}")
    if args.repeats < 1:
        problems.append(f"--repeats must be >= 1, got {args.repeats}")
    if not 2 <= args.steps <= EPOCH_STEPS:
        problems.append(f"--steps must be in 2..{EPOCH_STEPS}, got {args.steps}")
    if args.torch_python and "torch" in variants and not os.path.exists(args.torch_python):
        problems.append(f"--torch-python {args.torch_python} does not exist")
    if problems and not args.worker:
        _refuse(problems[0])
    args.nets, args.variants = nets, variants
    return args


def _refuse(message: str):
    print(f"peers: {message}", file=sys.stderr)
    sys.exit(2)


def available(args) -> tuple[list[str], list[str]]:
    """The variants that can run here, and a note for each that cannot."""
    import importlib.util
    keep, notes = [], []
    for v in args.variants:
        if v == "keras" and importlib.util.find_spec("keras") is None:
            notes.append("keras: skipped, keras is not importable in this Python")
        elif v == "torch" and not args.torch_python:
            notes.append(f"torch: skipped, no --torch-python given and {DEFAULT_TORCH} absent")
        else:
            keep.append(v)
    return keep, notes


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        return worker(args)
    variants, notes = available(args)
    for note in notes:
        print(f"note: {note}")
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "mnist")
        data_note = write_data(data_path, args.data_dir)
        print(f"data: {data_note}")
        peaks = {"jax": spawn(sys.executable, ["--worker", "matmul", "--kind", "jax"])}
        if "torch" in variants:
            peaks["torch"] = spawn(args.torch_python, ["--worker", "matmul", "--kind", "torch"])
        results = {n: {v: [] for v in variants} for n in args.nets}
        for repeat in range(args.repeats):
            for net in args.nets:
                for v in variants:
                    python = args.torch_python if v == "torch" else sys.executable
                    r = spawn(python, ["--worker", v, "--net", net, "--data", data_path,
                                       "--steps", str(args.steps),
                                       "--torch-threads", str(args.torch_threads)])
                    if "seconds" in r:
                        r["seconds_per_epoch"] = r["seconds"] / r["steps_timed"] * EPOCH_STEPS
                    results[net][v].append(r)
                    shown = (f"{r['seconds_per_epoch']:.3f} s/epoch, recompiles "
                             f"{r.get('recompiles')}" if "seconds" in r else r["error"])
                    print(f"repeat {repeat + 1}/{args.repeats} {net} {v}: {shown}", flush=True)
    print_table(args, variants, results, peaks, data_note)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       "machine": machine(), "steps": args.steps, "repeats": args.repeats,
                       "data": data_note, "matmul_peak": peaks, "results": results}, f,
                      indent=1)
    failed = any("error" in r for n in results.values() for rs in n.values() for r in rs)
    return 1 if failed else 0


def print_table(args, variants, results, peaks, data_note) -> None:
    jax_info = peaks["jax"]
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}; "
          f"device {jax_info.get('device', '?')}, JAX {jax_info.get('jax', '?')}; "
          f"{args.repeats} interleaved repeat(s), a fresh process each; {data_note}")
    scaled = (f"; {args.steps} steps timed, scaled to an epoch" if args.steps != EPOCH_STEPS
              else "")
    print(f"seconds per epoch ({EPOCH_STEPS} steps of {BATCH}, Adam {LR:g}{scaled}), "
          f"median [min-max] (ratio to bare JAX's median)\n")
    print("| net | " + " | ".join(VARIANTS[v] for v in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for net, by_variant in results.items():
        medians = {v: statistics.median(r["seconds_per_epoch"] for r in rs)
                   for v, rs in by_variant.items() if rs and all("seconds" in r for r in rs)}
        cells = []
        for v in variants:
            if v not in medians:
                cells.append("failed: " + next(r["error"] for r in by_variant[v] if "error" in r))
                continue
            times = [r["seconds_per_epoch"] for r in by_variant[v]]
            ratio = f" ({medians[v] / medians['bare']:.2f}x)" if "bare" in medians else ""
            cells.append(f"{medians[v]:.2f} [{min(times):.2f}-{max(times):.2f}]{ratio}")
        print(f"| {NETS[net]} | " + " | ".join(cells) + " |")
    print()
    for kind, peak in peaks.items():
        shown = (f"{peak['flops_per_s'] / 1e9:,.0f} GFLOP/s ({peak['n']}x{peak['n']} f32)"
                 if "flops_per_s" in peak else peak.get("error"))
        print(f"matmul peak, {'jnp.dot' if kind == 'jax' else 'torch.mm'}: {shown}")
    for net, by_variant in results.items():
        counts = {v: [r.get("recompiles") for r in rs] for v, rs in by_variant.items()}
        print(f"compilations after the first step, {net}: "
              + ", ".join(f"{v} {c if v != 'torch' else 'n/a (eager)'}"
                          for v, c in counts.items()))
    versions = {v: r["version"] for n in results.values() for v, rs in n.items() for r in rs
                if "version" in r}
    threads = {r["threads"] for n in results.values() for r in n.get("torch", []) if "threads" in r}
    if versions:
        print("versions: " + ", ".join(f"{v} {ver}" for v, ver in versions.items())
              + (f"; torch threads {', '.join(map(str, sorted(threads)))}" if threads else ""))


if __name__ == "__main__":
    sys.exit(main())
