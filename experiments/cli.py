"""`descent`: the command line. Thin: it parses arguments and calls experiments.run.

Exit codes: 0 done; 1 training stopped: it diverged (NaN/Inf) or a checkpoint could not be
written; 2 bad input (usage, config, names, files, an unreachable coordinator, a checkpoint of
another model); 128 + signal number (143 for SIGTERM, 130 for SIGINT) preempted: the step in
flight was finished and saved, and the same command resumes.
"""
import argparse
import collections
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

USAGE_EXIT = 2
STOPPED_EXIT = 1


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)  # every option that stores a value
        self.register("action", "store", _Once)

    def error(self, message):  # one line, exit 2, as for every other usage error
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


class _Once(argparse.Action):
    """Stores the value, as argparse's default action does, but refuses an option given twice
    (`--workdir a --workdir b`) rather than taking the last."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", set())
        if self.dest in given:
            raise _UsageError(f"{option_string} is given twice ("
                              f"{getattr(namespace, self.dest)!r} and {values!r}); give it once")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class _UsageError(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="descent", description="Train and evaluate neural networks with JAX.")
    p.add_argument("--version", action="version", version=f"descent {_version()}")
    p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    multi = _Parser(add_help=False)
    group = multi.add_argument_group("multi-process runs (one process per host)")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0; with --num-processes and --process-id")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)
    group.add_argument("--distributed", action="store_true",
                       help="join a Cloud TPU, Slurm or Open MPI job (found automatically "
                            "under Slurm and Open MPI)")
    group.add_argument("--coordinator-timeout", type=int, default=300, metavar="SECONDS")
    multi.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    t = sub.add_parser("train", parents=[multi], help="train as a config file says",
                       description="Train; any config field can be set with --config.KEY=VALUE "
                                   "(`descent config show FILE` lists every field). A config "
                                   "file is Python: run only configs you trust.",
                       epilog=_shipped_configs(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", required=True,
                   help="config file, e.g. experiments/configs/digits_mlp.py[:tiny]")
    t.add_argument("--workdir", required=True, help="where checkpoints, metrics and plots go")
    t.add_argument("--seeds", metavar="LIST",
                   help="train one run per seed as one compiled program (jax.vmap), each in "
                        "WORKDIR/seed_N: ranges and lists, e.g. 0-4 or 0,3,7-9")
    t.add_argument("--sweep", metavar="optimizer.learning_rate=V1,V2,...",
                   help="train one run per learning rate as one compiled program, each in "
                        "WORKDIR/learning_rate_V (with --seeds: every seed at every rate)")
    t.add_argument("--allow-config-change", action="store_true",
                   help="resume although the config differs from the saved one in more than "
                        "epochs, steps, devices or where the data is; the change is "
                        "recorded in WORKDIR/history.jsonl")

    e = sub.add_parser("eval", parents=[multi], help="evaluate a checkpoint of a workdir")
    e.add_argument("--workdir", required=True)
    e.add_argument("--checkpoint", default="best", help="best, latest or a step (default: best)")
    e.add_argument("--split", default="test", help="dataset split (default: test)")
    e.add_argument("--data-path", metavar="PATH",
                   help="where the run's data is now, if it moved: its file or folder, or for "
                        "a prepared dataset the folder of prepared datasets (the data must be "
                        "the same)")
    e.add_argument("--weights", choices=("raw", "ema"),
                   help="the weights as trained (raw) or their moving average (ema, for runs "
                        "trained with optimizer.ema_decay); default: what the run's "
                        "early_stopping.monitor ranks, raw unless it is an eval_ema_ metric")

    pr = sub.add_parser("predict", help="classify image files or CSV rows with a trained run",
                        description="Print the top classes with their probabilities for each "
                                    "image file (folders are searched for images), each row of "
                                    "a CSV file, or each row of a .npy array, read and "
                                    "preprocessed as the run's dataset was; for a regression "
                                    "run, the predicted values.")
    pr.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER")
    pr.add_argument("--workdir", required=True)
    pr.add_argument("--top-k", type=int, default=3, help="classes to show (default 3)")
    pr.add_argument("--checkpoint", default="best", help="best, latest or a step (default: best)")
    pr.add_argument("--weights", choices=("raw", "ema"),
                    help="raw weights or their moving average (default: what the run ranks)")
    pr.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    s = sub.add_parser("sample", help="generate text from a language model's checkpoint")
    s.add_argument("--workdir", required=True)
    s.add_argument("--prompt", required=True, action="append",
                   help="the text to continue, e.g. 'ROMEO:'; give it again for more texts, "
                        "drawn together and printed one after another, a blank line between")
    s.add_argument("--length", type=int, default=500,
                   help="characters (tokens, for a run on tokens) to generate at most "
                        "(default 500)")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="below 1 more likely characters, above 1 more varied; 0 always takes "
                        "the most likely (default 1)")
    s.add_argument("--top-k", type=int, default=0,
                   help="draw among the K most likely characters only (default 0: all)")
    s.add_argument("--top-p", type=float, default=1.0,
                   help="draw among the fewest most likely characters whose probabilities sum "
                        "to P (nucleus sampling; default 1: all)")
    s.add_argument("--stop", help="end a text after this text once it is drawn")
    s.add_argument("--checkpoint", default="best", help="best, latest or a step (default: best)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    st = sub.add_parser(
        "study", help="run a study of how networks learn (list: see them all)",
        description="Run one of the article's claims as a study: real runs on several seeds, "
                    "then report.md, results.json and figures in OUT/NAME. `descent study "
                    "list` shows them; `descent study all` runs every one and writes "
                    "OUT/index.md.")
    st.add_argument("name", help="a study's name, `list` or `all`")
    st.add_argument("--quick", action="store_true",
                    help="the seconds-long version the tests run")
    st.add_argument("--seeds", type=int, help="seeds per configuration (default: the study's)")
    st.add_argument("--out", default=os.path.join("runs", "studies"),
                    help="where each study's folder goes (default runs/studies); a study "
                         "overwrites only its own files there")
    st.add_argument("--data-dir", help="prepared tfds datasets, for the studies on MNIST and "
                                       "Tiny Shakespeare (default ~/tensorflow_datasets)")
    st.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    im = sub.add_parser(
        "import", help="turn a Hugging Face GPT-2 or a torchvision ResNet into a workdir",
        description="Write the weights of a Hugging Face GPT-2 folder (config.json, "
                    "model.safetensors) or a torchvision ResNet state dict (.safetensors, or "
                    ".pth with PyTorch installed) into a new work directory, as its checkpoint "
                    "at step 0: fine-tune from it with --config.init_from=WORKDIR, or export it.")
    im.add_argument("source", choices=("hf-gpt2", "torchvision-resnet"))
    im.add_argument("path", help="hf-gpt2: the model's folder; torchvision-resnet: its file")
    im.add_argument("--workdir", required=True)
    im.add_argument("--arch", help="torchvision-resnet: resnet18 ... resnet152, checked against "
                                   "the file (default: read from it)")
    im.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    ex = sub.add_parser(
        "export", help="write a gpt or resnet run's weights as Hugging Face's or torchvision's",
        description="Write the parameters of a checkpoint into the folder --out as safetensors, "
                    "with the names `descent import` reads: a gpt run as a Hugging Face GPT-2 "
                    "(config.json, model.safetensors), a resnet run as a torchvision state "
                    "dict (model.safetensors).")
    ex.add_argument("workdir")
    ex.add_argument("--out", required=True, help="a new or empty folder")
    ex.add_argument("--format", choices=("safetensors",), default="safetensors")
    ex.add_argument("--checkpoint", default="best", help="best, latest or a step (default: best)")
    ex.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    pl = sub.add_parser(
        "plan", help="the memory and FLOPs a config's training step needs per device",
        description="Compile a config's training step for its mesh without training or "
                    "allocating the model, and print per device: the bytes of the parameters, "
                    "the optimizer state and the rest of the state under the run's shardings, "
                    "the batch, XLA's temporary bytes, and the FLOPs of one step.")
    pl.add_argument("--config", required=True,
                    help="config file, e.g. experiments/configs/shakespeare_gpt.py[:cpu]")
    pl.add_argument("--devices", type=int, metavar="N",
                    help="plan on N CPU devices made for it (default: this machine's devices)")
    pl.add_argument("--device-memory", metavar="SIZE",
                    help="each device's memory, e.g. 80GB or 16GiB: say whether the run fits, "
                         "and if not, what would make it")
    pl.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    m = sub.add_parser("models", help="list every net with its parameter count and fields",
                       description="Every net with its parameter count at its typical input "
                                   "and its fields' defaults; with --config, the parameters of "
                                   "exactly that config's net on its dataset.")
    m.add_argument("--config", help="count this config's net, e.g. "
                                    "experiments/configs/digits_mlp.py (--config.* applies)")
    m.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    c = sub.add_parser("config", help="show a config with every field")
    csub = c.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    show = csub.add_parser("show", help="print a config, overrides applied, with every field",
                           description="Print the config FILE[:variant] resolves to, with "
                                       "every field and its value after --config.KEY=VALUE "
                                       "overrides: what `descent train` would run.")
    show.add_argument("file", help="e.g. experiments/configs/digits_mlp.py[:tiny]")
    show.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    d = sub.add_parser("data", help="prepare datasets")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    prep = dsub.add_parser(
        "prepare", help="build a dataset from raw files on disk, or your text as tokens",
        description="Build NAME (mnist, fashion_mnist, cifar10, cifar100, imagenette, "
                    "imagenet2012, tiny_shakespeare) with tfds's own builder from the raw "
                    "files tfds would download (e.g. the four MNIST IDX .gz files, "
                    "cifar-10-binary.tar.gz, ILSVRC2012_img_train.tar and ..._val.tar) found "
                    "in --manual-dir; needs TensorFlow: pip install -e '.[tf]'. Or `prepare "
                    "text CORPUS --files F ...`: train a tokenizer on your text files and "
                    "write them as token files into DATA_DIR/CORPUS, for "
                    "--config.dataset.name=tokens --config.dataset.path=DATA_DIR/CORPUS.")
    prep.add_argument("name", help="a tfds dataset, or `text`")
    prep.add_argument("corpus", nargs="?", help="text: the name of the folder to write")
    prep.add_argument("--manual-dir", help="folder holding the raw files")
    prep.add_argument("--data-dir", help="tfds data directory (default: ~/tensorflow_datasets); "
                                         "text: where CORPUS goes (default: runs/data)")
    prep.add_argument("--files", nargs="+", help="text: the UTF-8 text files to encode")
    prep.add_argument("--tokenizer", default="bpe:8192",
                      help="text: bpe:SIZE (byte-level BPE trained on the files), byte, char, "
                           "or gpt2:DIR (GPT-2's vocab.json and merges.txt in DIR); default "
                           "bpe:8192")
    prep.add_argument("--validation-fraction", type=float, default=0.1,
                      help="text: the end of each file kept for validation (default 0.1)")
    prep.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    launch = sub.add_parser(
        "launch-local", help="run a command as N processes on this machine",
        description="Start N real processes of `descent COMMAND ...` on localhost, joined "
                    "through JAX's multi-controller runtime, each with its own CPU devices: "
                    "descent launch-local --num-processes 2 -- train --config ... --workdir ...")
    launch.add_argument("--num-processes", type=int, required=True)
    launch.add_argument("--devices-per-process", type=int, default=4)
    launch.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    from train.messages import shown

    argv = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in argv
    with shown(verbose), _quiet_closed_loops(verbose):  # descent's messages as lines
        return _main(argv, verbose)


@contextlib.contextmanager
def _quiet_closed_loops(verbose: bool):
    """When a checkpoint cannot be written (a full disk), the storage library's threads still
    hold writes for orbax's event loop, which is closed by then: each reports "RuntimeError:
    Event loop is closed" as an exception nobody could catch (`sys.unraisablehook`, or
    `sys.excepthook`), a traceback apiece before descent's one line. Those are dropped here
    (shown with --verbose); any other is reported as Python would."""
    def closed_loop(value) -> bool:
        return (not verbose and isinstance(value, RuntimeError)
                and str(value) == "Event loop is closed")

    def excepthook(kind, value, tb):
        if not closed_loop(value):
            hooks[0](kind, value, tb)

    def unraisablehook(unraisable):
        if not closed_loop(unraisable.exc_value):
            hooks[1](unraisable)

    hooks = sys.excepthook, sys.unraisablehook
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = hooks


def _main(argv: list[str], verbose: bool) -> int:
    if not verbose:
        from absl import logging  # orbax logs routine decisions as warnings, and the failures
        logging.set_verbosity(logging.FATAL)  # it raises as errors too: we report those once
    try:
        return _run(argv)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line unless --verbose
        from train.checkpoint import CheckpointWriteError
        from train.loop import Diverged, Preempted
        if isinstance(e, Preempted):
            import jax
            if jax.process_index() == 0:
                print(f"descent: {e}", file=sys.stderr)
            return 128 + e.signum
        if verbose:
            raise
        from experiments.studies.common import StudyError
        cause = e.__cause__ if isinstance(e, StudyError) else e  # a run of a study: its reason
        usage = isinstance(cause, (ValueError, OSError))
        if not usage and not isinstance(e, (Diverged, CheckpointWriteError, StudyError)):
            raise
        if isinstance(e, CheckpointWriteError):
            # orbax's writer threads may be stuck on the failed disk; what is committed is safe,
            # so leave now rather than wait for them at interpreter exit. Their own dying words
            # ("Event loop is closed") go to /dev/null, so that ours is the last line.
            sys.stdout.flush()
            sys.stderr.flush()
            terminal = os.dup(2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            os.write(terminal, f"descent: error: {e}\n".encode())
            os._exit(STOPPED_EXIT)
        print(f"descent: error: {e}", file=sys.stderr)
        return USAGE_EXIT if usage else STOPPED_EXIT


def _run(argv: list[str]) -> int:
    if "--" in argv:  # launch-local: what follows `--` is the command each process runs
        cut = argv.index("--")
        args = _parser().parse_args(argv[:cut])
        if args.command != "launch-local":
            raise _UsageError("`--` separates launch-local's options from the command it runs")
        return launch_local(args.num_processes, args.devices_per_process, argv[cut + 1:],
                            verbose=args.verbose)

    parser = _parser()
    args, rest = parser.parse_known_args(argv)  # the --config.* overrides are in `rest`
    if args.command == "launch-local":
        raise _UsageError("launch-local needs a command after `--`, e.g. "
                          "`descent launch-local --num-processes 2 -- train --config ...`")
    takes_config = args.command in ("train", "config", "plan") or (
        args.command == "models" and args.config)
    if takes_config:
        from experiments.config import load_config, override
        config = load_config(args.file if args.command == "config" else args.config)
        config, overridden, rest = override(config, rest)
        if args.command != "config":  # `config show` shows any config; what runs is checked
            from experiments.config import check_values
            check_values(config)
    elif any(arg.startswith("--config.") for arg in rest):
        raise _UsageError(f"--config.* overrides apply to `descent train`, `plan`, `config "
                          f"show` and `models --config`, not `{args.command}`")
    if rest:  # absl reads `--config.log.tensorboard false` as true, then `false` is left over
        hint = ("; a true/false field takes its value after '=': --config.KEY=false"
                if any(arg.lower() in ("true", "false") for arg in rest) else "")
        parser.error(f"unrecognized arguments: {' '.join(rest)}{hint}")
    _check_numbers(args)
    if args.command == "data":
        return prepare_data(args)
    if args.command == "study":
        return study(args)
    if args.command == "config":
        print(config)
        return 0
    if args.command == "models":
        print_models(config if args.config else None)
        return 0
    if args.command == "plan":
        return plan(config, overridden, args)
    if args.command in ("import", "export"):
        from experiments import weights
        if args.command == "import":
            _say(weights.import_weights(args.source, args.path, args.workdir, args.arch))
        else:
            for path in weights.export(args.workdir, args.out, args.checkpoint):
                _say(f"wrote {path}")
        return 0
    if args.command in ("train", "eval"):
        _join_processes(args)
    from experiments import run  # imports JAX: only once the arguments are known good

    if args.command == "train" and (args.seeds is not None or args.sweep is not None):
        run.check_named_options(config, overridden)
        return train_many(run, config, args, overridden)
    if args.command == "train":
        run.check_named_options(config, overridden)
        summary = run.train_and_evaluate(config, args.workdir,
                                         allow_config_change=args.allow_config_change)
        test = summary["test"]
        from train.storage import absolute  # a bucket's URL stays as it is

        curves = summary["curves"] and f"curves: {absolute(summary['curves'])}"
        _say(f"workdir: {absolute(args.workdir)}{_outputs(config, args.workdir, curves)}")
        for other in (m for m in summary["tests"].values() if m is not test):
            _say(f"{_WEIGHTS[other['weights']]} at the same step: {_scores(other)}")
        _say(f"best checkpoint: step {test['step']}; {_scores(test)}"
             + (f" ({_WEIGHTS[test['weights']]})" if len(summary["tests"]) > 1 else ""))
    elif args.command == "eval":
        m = run.evaluate(args.workdir, args.checkpoint, args.split, args.weights,
                         args.data_path)
        _say(f"checkpoint step {m['step']}: {_scores(m)}"
             + (f" ({_WEIGHTS['ema']})" if m["weights"] == "ema" else ""))
        if "not_saved" in m:  # the result is printed; that it was not saved is bad input
            return USAGE_EXIT
    elif args.command == "predict":
        from data.arrays import printable  # file names are the user's too
        from data.local import check_prediction_files
        check_prediction_files(args.paths)  # what needs no run, before one is restored
        restored = run.restore(args.workdir, args.checkpoint, mesh="data=1",
                               weights=args.weights, read_data=False)
        check_prediction_files(args.paths, restored.dataset)
        for what, prediction in run.predict_files(restored, args.paths):
            _say(f"{printable(what)}: {_prediction(restored.dataset, prediction, args.top_k)}")
    elif args.command == "sample":
        texts = run.sample(args.workdir, args.prompt, args.length, args.temperature,
                           args.checkpoint, args.seed, top_k=args.top_k, top_p=args.top_p,
                           stop=args.stop, progress=True)
        _say("\n\n".join(texts))
    return 0


SWEEPABLE = ("optimizer.learning_rate",)
# More runs than any machine holds as one program; the bound also keeps `--seeds 0-99999999999`
# from building its list of seeds before the group's own size check can refuse it.
MAX_SEEDS = 2**16


def _check_numbers(args) -> None:
    """Refuses a numeric option no command can use (NaN, inf, out of range) before any work:
    argparse's `type=float` takes 'nan' and '1e999', `type=int` any size."""
    from experiments.configs.common import INT_LIMIT

    def at_least(option: str, low: int, value, high: int = INT_LIMIT) -> None:
        if value is not None and not (math.isfinite(value) and low <= value < high):
            raise _UsageError(f"{option} {value} must be from {low} to {high - 1:,}")

    given = vars(args)
    at_least("--top-k", 0 if args.command == "sample" else 1, given.get("top_k"))
    if given.get("top_p") is not None and not (math.isfinite(args.top_p)
                                               and 0 < args.top_p <= 1):
        raise _UsageError(f"--top-p {args.top_p} must be above 0 and at most 1 (1 draws among "
                          f"every character)")
    at_least("--length", 1, given.get("length"))
    at_least("--seed", 0, given.get("seed"))
    if given.get("temperature") is not None and not (
            math.isfinite(args.temperature) and args.temperature >= 0):
        raise _UsageError(f"--temperature {args.temperature} must be a finite number, at least "
                          f"0 (0 always takes the most likely character)")
    at_least("--coordinator-timeout", 1, given.get("coordinator_timeout"))
    at_least("--devices", 1, given.get("devices"), 2**16)
    if args.command != "launch-local":
        at_least("--num-processes", 1, given.get("num_processes"))
        at_least("--process-id", 0, given.get("process_id"))
    if args.command == "study":
        at_least("--seeds", 1, args.seeds)


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,3,7-9' -> [0, 3, 7, 8, 9]; anything else is refused."""
    seeds = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            if not all(n.strip().isascii() and n.strip().isdigit()
                       for n in (first, last)[:1 + bool(dash)]):
                raise ValueError  # int() also reads '1_0' and other scripts' digits
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise _UsageError(f"--seeds {text!r}: {part.strip()!r} is not a seed or a range of "
                              f"seeds; write e.g. 0-4 or 0,3,7-9") from None
        if low < 0 or high < low:
            raise _UsageError(f"--seeds {text!r}: {part.strip()!r} is not a range from a lower "
                              f"to a higher seed, both at least 0; write e.g. 0-4")
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise _UsageError(f"--seeds {text!r} names more than {MAX_SEEDS:,} runs; train "
                              f"fewer seeds at once")
        seeds += range(low, high + 1)
    repeated = sorted(s for s, n in collections.Counter(seeds).items() if n > 1)
    if repeated:
        raise _UsageError(f"--seeds {text!r} names seed {', '.join(map(str, repeated))} more "
                          f"than once")
    return seeds


def parse_sweep(text: str, overrides: list[str]) -> list[float]:
    """'optimizer.learning_rate=0.01,0.03' -> [0.01, 0.03]."""
    key, eq, values = text.partition("=")
    key = key.removeprefix("config.")
    if key not in SWEEPABLE or not eq:
        raise _UsageError(f"--sweep {text!r}: sweep {' or '.join(SWEEPABLE)}, e.g. --sweep "
                          f"optimizer.learning_rate=0.001,0.003,0.01 (runs trained as one "
                          f"program may differ only in it and the seed)")
    if key in overrides:
        raise _UsageError(f"--sweep sets {key}, which --config.{key} sets too; give it once")
    try:
        rates = [float(v) for v in values.split(",")]
    except ValueError:
        raise _UsageError(f"--sweep {text!r}: the values are not numbers; write e.g. "
                          f"optimizer.learning_rate=0.001,0.003,0.01") from None
    if any(not (math.isfinite(r) and r > 0) for r in rates) or len(set(rates)) < len(rates):
        raise _UsageError(f"--sweep {text!r}: learning rates must be finite numbers above 0, "
                          f"each once")
    return rates


def train_many(run, config, args, overrides: list[str]) -> int:
    """`descent train --seeds ... / --sweep ...`: the runs as one program, a line for each."""
    seeds = parse_seeds(args.seeds) if args.seeds is not None else []
    rates = parse_sweep(args.sweep, overrides) if args.sweep is not None else []
    if seeds and "seed" in overrides:
        raise _UsageError("--seeds sets the seed, which --config.seed sets too; give it once")
    if args.allow_config_change:
        raise _UsageError("--allow-config-change applies to single runs, not to --seeds or "
                          "--sweep")
    run.many.check_fits(max(len(seeds), 1) * max(len(rates), 1))  # before a config is made
    named = run.variants(config, seeds, rates)
    workdirs = [os.path.join(args.workdir, name) for name in named]
    summaries = run.train_many(list(named.values()), workdirs)
    curves = config.log.curves and "curves.png in each"
    _say(f"workdirs: {os.path.join(os.path.abspath(args.workdir), '<run>')} for the "
         f"{len(named)} runs below{_outputs(config, args.workdir, curves)}")
    width = max(map(len, named))
    for name, summary in zip(named, summaries):
        if summary["diverged"]:
            _say(f"{name:<{width}}  diverged: {summary['diverged']}")
            continue
        test = summary["test"]
        stopped = (f"; stopped early at step {summary['latest_step']}"
                   if summary["stop_reason"] != "finished" else "")
        _say(f"{name:<{width}}  best checkpoint: step {test['step']}; {_scores(test)}"
             + (f" ({_WEIGHTS[test['weights']]})" if len(summary["tests"]) > 1 else "")
             + stopped)
    return STOPPED_EXIT if any(s["diverged"] for s in summaries) else 0


_WEIGHTS = {"raw": "raw weights", "ema": "moving average of the weights"}


def _prediction(dataset, prediction, top_k: int) -> str:
    """'cat 0.912, dog 0.071, bird 0.010', or for regression the values."""
    import numpy as np

    from data.arrays import printable  # class names come from the user's files

    if dataset.task == "regression":
        return ", ".join(f"{v:.6g}" for v in prediction)
    names = dataset.class_names or [str(i) for i in range(len(prediction))]
    top = np.argsort(-prediction, kind="stable")[:top_k]
    return ", ".join(f"{printable(names[i])} {prediction[i]:.3f}" for i in top)


def _scores(m: dict) -> str:
    """'test accuracy 0.9778 (360 examples), loss 0.1707', for a language model
    '... (111,520 characters) ...', or for regression 'test mse 0.0677, mae 0.2182 (400
    examples)'."""
    counted = f"({m['examples']:,} {m.get('counted', 'examples')})"
    if "accuracy" in m:
        return f"{m['split']} accuracy {m['accuracy']:.4f} {counted}, loss {m['loss']:.4f}"
    return f"{m['split']} mse {m['loss']:.4g}, mae {m['mae']:.4g} {counted}"


def study(args) -> int:
    """`descent study list|all|NAME`: lists the studies, or runs one or all of them."""
    from experiments import studies

    if args.name == "list":
        for name in studies.STUDIES:
            m = studies.module(name)
            print(f"{name:<22} {m.TITLE}: \"{m.CLAIM}\"")
        print("Run one with `descent study NAME` (--quick for seconds), all with "
              "`descent study all`.")
        return 0
    options = dict(quick=args.quick, seeds=args.seeds, data_dir=args.data_dir,
                   progress=lambda line: print(line, flush=True))
    if args.name == "all":
        studies.run_all(args.out, **options)
        _say(f"every study's report: {os.path.abspath(os.path.join(args.out, 'index.md'))}")
    else:
        studies.module(args.name)  # an unknown name fails before anything runs
        studies.run(args.name, args.out, **options)
        _say(f"report: {os.path.abspath(os.path.join(args.out, args.name, 'report.md'))}")
    return 0


def plan(config, overridden: list[str], args) -> int:
    """`descent plan`: the training step compiled for the config's mesh, never run."""
    from train import plan as planning
    memory = planning.parse_bytes(args.device_memory) if args.device_memory else None
    if args.devices:
        _use_cpu_devices(args.devices)
    from experiments import run
    run.check_named_options(config, overridden)
    model, dataset = run.build(config, deferred=True)
    for line in planning.report(planning.make_plan(config, model, dataset), memory):
        _say(line)
    return 0


def _use_cpu_devices(count: int) -> None:
    """Makes JAX start with `count` CPU devices; in a process where JAX has started, its
    devices must already be those."""
    import jax
    try:
        jax.config.update("jax_num_cpu_devices", count)
        jax.config.update("jax_platforms", "cpu")
    except RuntimeError:  # JAX has started (descent called from Python): take it as it is
        pass
    devices = jax.devices()
    if len(devices) != count or devices[0].platform != "cpu":
        raise ValueError(f"--devices {count}: JAX started in this process with "
                         f"{len(devices)} {devices[0].platform} device(s); run `descent plan` "
                         f"in a process of its own")


def print_models(config=None) -> None:
    """A table of every registered net: parameters for its typical input and class count, and
    each net's fields; or, given a config, the parameters of exactly its net."""
    import nets

    if config is not None:
        from experiments import run
        dataset = run.load_dataset(config)
        fields = {k: config.model[k] for k in nets.fields(config.model.name)}  # in its order
        count = nets.count_params(config.model.name, dataset.input_shape, dataset.num_outputs,
                                  **fields)
        print(f"{count:,} parameters: {config.model.name} "
              f"({', '.join(f'{k}={v}' for k, v in fields.items())}) on {config.dataset.name} "
              f"(input {'x'.join(map(str, dataset.input_shape))}, {dataset.num_outputs} outputs)")
        return
    rows = [("name", "parameters", "input", "classes", "what")]
    for name, net in nets.NETS.items():
        rows.append((name, f"{nets.count_params(name):,}", "x".join(map(str, net.input_shape)),
                     f"{net.num_classes:,}", net.about))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].ljust(widths[2]),
                         r[3].rjust(widths[3]), r[4]]))
    print("\nFields and their defaults (counts above are at these defaults):")
    for name in nets.NETS:
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in nets.fields(name).items()))
    print("Pick one with --config.model.name=NAME; a model.* field the net does not take is an "
          "error that lists the fields it does take. `descent models --config FILE` counts "
          "that config's net.")


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("descent")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _shipped_configs() -> str:
    """`descent train --help`'s list of the configs in experiments/configs/, each with the first
    line of its docstring and its :variants."""
    import ast
    import glob

    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    lines = ["shipped configs (experiments/configs/; FILE:variant picks a variant):"]
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        tree = ast.parse(open(path).read())
        paragraph = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
        doc = paragraph.split(". ")[0].rstrip(".") + "."  # its first sentence
        variants = next((ast.literal_eval(node.value) for node in tree.body
                         if isinstance(node, ast.Assign)
                         and getattr(node.targets[0], "id", "") == "VARIANTS"), ())
        if os.path.basename(path) in ("__init__.py", "common.py"):
            continue
        suffix = f" [:{', :'.join(variants)}]" if variants else ""
        lines.append(f"  {os.path.basename(path)}{suffix}\n      {doc}")
    return "\n".join(lines)


def _join_processes(args) -> None:
    from train import distributed

    if args.coordinator or args.num_processes is not None or args.process_id is not None:
        if not (args.coordinator and args.num_processes and args.process_id is not None):
            raise _UsageError("--coordinator, --num-processes and --process-id go together")
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               args.coordinator_timeout)
    elif args.distributed or distributed.cluster_size_from_environment():
        distributed.initialize(timeout_s=args.coordinator_timeout)


def prepare_data(args) -> int:
    """`descent data prepare NAME --manual-dir DIR`, or `... text CORPUS --files ...`."""
    text_only = [f"--{k.replace('_', '-')}" for k, default in (
        ("files", None), ("tokenizer", "bpe:8192"), ("validation_fraction", 0.1))
        if getattr(args, k) != default]
    if args.name != "text":
        if args.corpus is not None or text_only:
            raise _UsageError(f"{', '.join(text_only) or args.corpus} applies to `descent data "
                              f"prepare text CORPUS --files ...`, not to {args.name}")
        if args.manual_dir is None:
            raise _UsageError("data prepare NAME needs --manual-dir, the folder of raw files")
        from data.prepare import prepare
        prepare(args.name, args.manual_dir, args.data_dir, quiet=not args.verbose)
        return 0
    if args.corpus is None or not args.files:
        raise _UsageError("data prepare text needs a name and the files: descent data prepare "
                          "text CORPUS --files a.txt b.txt")
    if args.manual_dir is not None:
        raise _UsageError("--manual-dir applies to tfds datasets; text reads --files")
    import json

    from data import check_path, tokens
    for path in [*args.files, args.data_dir]:
        check_path("data prepare text", path)
    data_dir = args.data_dir or os.path.join("runs", "data")
    folder = tokens.prepare(args.corpus, args.files, args.tokenizer, data_dir,
                            validation_fraction=args.validation_fraction,
                            progress=sys.stderr.isatty())
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    counts = ", ".join(f"{v['tokens']:,} {k}" for k, v in manifest["splits"].items())
    print(f"wrote {folder}: {counts} tokens, a vocabulary of {manifest['vocab_size']:,} "
          f"({args.tokenizer}); train on it with --config.dataset.name=tokens "
          f"--config.dataset.path={folder}")
    return 0


def _outputs(config, workdir: str, curves: str | None) -> str:
    """' (curves: ...; TensorBoard: ...)': where a run's curves and event files are, of those
    its config has it write (`log.curves`, `log.tensorboard`); empty where it writes neither."""
    shown = [curves] if curves else []
    if config.log.tensorboard:
        shown.append(f"TensorBoard: tensorboard --logdir {workdir}")
    return f" ({'; '.join(shown)})" if shown else ""


def _say(line: str) -> None:
    import jax
    if jax.process_index() == 0:
        print(line)


def gloo_chatter(line: str) -> bool:
    """The collective library's connection lines. Its threads write them into one another, so
    one may sit inside another line, or a line's tail stand alone."""
    return "[Gloo]" in line or line.startswith("Expected number of connected peer ranks")


# Each process on this machine is a whole JAX runtime (an interpreter, XLA, its devices'
# buffers): past this many, one machine runs out of memory or cores before they train.
MAX_LOCAL_PROCESSES = 64


def launch_local(num_processes: int, devices_per_process: int, command: list[str], *,
                 verbose: bool = False) -> int:
    """Runs `descent COMMAND` as `num_processes` CPU processes joined on localhost.

    Their output comes through here a whole line at a time, without the collective library's
    "[Gloo] Rank N is connected..." lines unless `verbose`. Returns the first non-zero exit code
    (and stops the other processes), or 0.
    """
    if not (1 <= num_processes <= MAX_LOCAL_PROCESSES and 1 <= devices_per_process <= 1024):
        raise _UsageError(f"--num-processes must be from 1 to {MAX_LOCAL_PROCESSES} and "
                          f"--devices-per-process from 1 to 1024 (got {num_processes} and "
                          f"{devices_per_process})")
    if not command or command[0] not in ("train", "eval"):
        raise _UsageError("launch-local runs `train ...` or `eval ...` after `--`")
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    count = "--xla_force_host_platform_device_count"  # the caller's other XLA flags are kept
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(count)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": " ".join([*flags, f"{count}={devices_per_process}"])}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments", *command, "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", str(num_processes), "--process-id", str(i)], env=env,
        stdout=subprocess.PIPE, text=True, bufsize=1)
        for i in range(num_processes)]
    lock = threading.Lock()

    def relay(stream):
        for line in stream:
            if verbose or not gloo_chatter(line):
                with lock:
                    sys.stdout.write(line)
                    sys.stdout.flush()

    relays = [threading.Thread(target=relay, args=(p.stdout,), daemon=True) for p in procs]
    for t in relays:
        t.start()

    def forward(signum, _):  # a preemption notice for the launcher is one for every process
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        for t in relays:
            t.join(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
