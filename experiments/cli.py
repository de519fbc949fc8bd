"""The `memrl` command line: train | report | rollout.

Each subcommand lives in its own module, which exposes `add_parser(subparsers)`; the parser it
adds sets `func(args) -> int` as its default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "experiments.launcher",
    "report": "experiments.report",
    "rollout": "experiments.rollout",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memrl", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
