"""What every pipeline script shares: the `--params` / `--set` options, logging, and loading params."""

from __future__ import annotations

import argparse
import logging

from acol.config import Params, load_params

__all__ = ["stage_parser", "params_from_args", "setup_logging"]


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
    return parser


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def params_from_args(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.overrides)
