"""Where descent's messages go: Python's `logging`, each module to the logger named after it
(`train.loop`, `experiments.run`, ...). Importing descent installs no handler, so a program
that uses it as a library decides what it shows; `shown` is the one handler the command line
installs. Imports nothing heavy: the command line installs it before it knows its command.
"""
import contextlib
import logging
import sys

from tqdm import tqdm

SOURCES = ("train", "data", "nets", "experiments")  # descent's packages: its loggers


class _Lines(logging.Handler):
    """Each message as a plain line: information on stdout, warnings and errors on stderr after
    "warning: " or "error: ". Written through tqdm, so a progress bar stays whole, to the
    streams `sys` holds when the message comes (a test may have replaced them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                tqdm.write(f"{record.levelname.lower()}: {text}", file=sys.stderr)
            else:
                tqdm.write(text, file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging's own way to report a failing handler
            self.handleError(record)


@contextlib.contextmanager
def shown(verbose: bool = False):
    """Shows descent's messages as plain lines while the block runs: INFO and above, with
    `verbose` DEBUG too. Leaves the loggers as they were found."""
    handler = _Lines()
    loggers = [logging.getLogger(name) for name in SOURCES]
    before = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False  # shown once, here, not again by a handler above
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, before):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
