"""What every pipeline script shares: the `--params` / `--set` / `--debug` options, logging, loading params,
and `run_stage`, which turns a user's mistake into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from acol.config import Params, load_params, resolve_paths
from acol.cpu_isa import pin_cpu_isa
from acol.errors import UserError

__all__ = [
    "DEBUG_ENV",
    "USER_ERROR_EXIT_CODE",
    "stage_parser",
    "params_from_args",
    "run_stage",
    "setup_logging",
]

USER_ERROR_EXIT_CODE = 2  # as argparse's for a bad command line: the input is wrong, not the program
DEBUG_ENV = "ACOL_DEBUG"  # =1: user errors keep their traceback, as with --debug

# The errors a user can fix: every `acol.errors.UserError` (bad params, data, weights, maps, report inputs, Ray
# placement, an unreachable tracking server), and a missing input file. A base class, not a table of names to
# keep up to date: a new user error is recognised by being one.
_USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set train.epochs=2 (repeatable)",
    )
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of input errors too (or {DEBUG_ENV}=1)"
    )
    return parser


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def params_from_args(args: argparse.Namespace) -> Params:
    """params.yaml with the `--set` overrides, its local paths made absolute against the working directory
    (once, here: Ray workers and jobs run elsewhere; `acol.config.resolve_paths`)."""
    return resolve_paths(load_params(args.params, args.overrides), Path.cwd())


def _one_line(error: BaseException) -> str:
    """The message on one line: a multi-line ParamsError becomes "header: key: ...; key: ..."."""
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"{error.strerror or 'not found'}: {error.filename}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    text = lines[0]
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def run_stage(main: Callable[[], int | None]) -> None:
    """Run a stage's `main`, exiting with its nonzero status; a user error prints ``error: <message>``, exits 2.

    Why: the message already names the file or key and the allowed values; a traceback in front of it hides
    it. ``--debug`` (or ACOL_DEBUG=1) re-raises it with the traceback; any other exception keeps its traceback.
    The CPU kernels' instruction set is pinned first (`acol.cpu_isa`), before any of the stage's kernels run.
    """
    try:
        pin_cpu_isa()
        code = main()
    except Exception as error:
        if _debug_requested(sys.argv[1:]) or not isinstance(error, _USER_ERRORS):
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    if code:
        sys.exit(code)
