"""The library's one logger, `logging.getLogger("scratchllm")`, a child a module, and the handler the
command line sets up.

A library user routes these records as every other library's. Every module's logger lets records
through only on the first rank of a torchrun job (or in a lone process), unless a record asks for
every rank (`extra=ALL_RANKS`). What the command line makes of them (`setup_logging`):

- a record of a command's report, `extra=REPORT` (what a download or tokenize did to its folder:
  "resuming ...", "nothing to do"), goes to stdout, even under --quiet;
- other information (training's progress) goes to stderr, above a progress bar, hidden by --quiet;
- warnings and errors go to stderr always; --debug shows debug records too.
"""

from __future__ import annotations

import logging
import os
import sys

NAME = "scratchllm"
REPORT = {"report": True}
ALL_RANKS = {"all_ranks": True}


def main_rank() -> bool:
    """Whether this process is rank 0 of a torchrun job, or no part of one."""
    return os.environ.get("RANK", "0") == "0"


class RankZero(logging.Filter):
    """Records of the first rank, and records that ask to be seen on every rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the record through on rank 0, or anywhere when it carries `ALL_RANKS`."""
        return main_rank() or bool(getattr(record, "all_ranks", False))


_RANK_ZERO = RankZero()


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name` (a child of "scratchllm"), quiet on every rank but the first."""
    logger = logging.getLogger(name)
    if _RANK_ZERO not in logger.filters:  # a logger filters only what is logged on it, not its children
        logger.addFilter(_RANK_ZERO)
    return logger


class CommandLineHandler(logging.Handler):
    """Reports to stdout, everything else to stderr (see the module docstring).

    The streams are looked up at each record, so a redirection made after the set-up is honoured, and
    written through tqdm, which lifts a live progress bar out of the way and draws it again below.
    """

    def __init__(self, quiet: bool = False):
        super().__init__()
        self.quiet = quiet
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record, or nothing for progress under --quiet."""
        try:
            report = bool(getattr(record, "report", False)) and record.levelno < logging.WARNING
            if self.quiet and record.levelno < logging.WARNING and not report:
                return
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout if report else sys.stderr)
        except Exception:  # logging's own rule: a failure to log must not stop the program
            self.handleError(record)


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    """Show the library's records on the terminal as the command line does; a second call replaces the
    first's handler, so a process (or a test) may set it up again."""
    logger = logging.getLogger(NAME)
    for handler in [h for h in logger.handlers if isinstance(h, CommandLineHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(CommandLineHandler(quiet))
    logger.setLevel(logging.DEBUG if debug else logging.INFO)

