"""`descent`: the command line. Thin: it parses arguments and calls experiments.run.

Exit codes: 0 done; 1 training diverged (NaN/Inf); 2 bad input (usage, config, names, files).
"""
import argparse
import os
import sys

USAGE_EXIT = 2
DIVERGED_EXIT = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other usage error
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


class _UsageError(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="descent", description="Train and evaluate neural networks with JAX.")
    p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train as a config file says",
                       description="Train; any config field can be set with --config.KEY=VALUE.")
    t.add_argument("--config", required=True, help="config file, e.g. experiments/configs/digits_mlp.py[:tiny]")
    t.add_argument("--workdir", required=True, help="where checkpoints, metrics and plots go")
    t.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)

    e = sub.add_parser("eval", help="evaluate a checkpoint of a workdir")
    e.add_argument("--workdir", required=True)
    e.add_argument("--checkpoint", default="best", help="best, latest or a step (default: best)")
    e.add_argument("--split", default="test", help="dataset split (default: test)")
    e.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in argv
    if not verbose:
        from absl import logging  # orbax logs its routine decisions as warnings
        logging.set_verbosity(logging.ERROR)
    try:
        return _run(argv)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line unless --verbose
        from train.loop import Diverged
        if verbose:
            raise
        usage = isinstance(e, (ValueError, OSError))
        if not usage and not isinstance(e, Diverged):
            raise
        print(f"descent: error: {e}", file=sys.stderr)
        return USAGE_EXIT if usage else DIVERGED_EXIT


def _run(argv: list[str]) -> int:
    from experiments.config import apply_override, load_config, split_overrides

    overrides, rest = split_overrides(argv)
    args = _parser().parse_args(rest)
    if overrides and args.command != "train":
        raise _UsageError(f"--config.* overrides apply to `descent train`, not `{args.command}`")

    if args.command == "train":
        config = load_config(args.config)
        for key, value in overrides:
            apply_override(config, key, value)
        from experiments import run  # imports JAX: only once the arguments are known good
        summary = run.train_and_evaluate(config, args.workdir)
        test = summary["test"]
        print(f"best checkpoint: step {test['step']}; {test['split']} accuracy "
              f"{test['accuracy']:.4f} ({test['examples']} examples), loss {test['loss']:.4f}")
        print(f"workdir: {os.path.abspath(args.workdir)} (curves: {summary['curves']})")
    elif args.command == "eval":
        from experiments import run
        m = run.evaluate(args.workdir, args.checkpoint, args.split)
        print(f"checkpoint step {m['step']}: {m['split']} accuracy {m['accuracy']:.4f} "
              f"({m['examples']} examples), loss {m['loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
