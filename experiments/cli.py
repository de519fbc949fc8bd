"""The `memrl` command line: train | report | rollout | check | models.

Each subcommand lives in its own module, which exposes `add_parser(subparsers)`; the parser it
adds sets `func(args) -> int` as its default. Only the chosen subcommand's module is imported
(`memrl --help` and `memrl report` load neither Ray nor PyTorch, `memrl train --dry-run` no
Ray).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS = {
    "train": ("experiments.study.launcher", "run the study in a YAML file with Ray Tune"),
    "report": ("experiments.report.write", "MMER table, aggregate statistics and learning "
                                           "curves of a study"),
    "rollout": ("experiments.rllib.rollout", "run a trained policy for N episodes and report "
                                             "returns"),
    "check": ("experiments.check", "run the interface laws on a registered memory model"),
    "models": ("experiments.models", "list the registered memory models, their keywords and "
                                     "POPGym originals"),
}


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="memrl", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, subparsers = _top_parser()              # names and help only: nothing imported
    for name, (_, text) in COMMANDS.items():
        subparsers.add_parser(name, help=text, add_help=False)
    command, _ = parser.parse_known_args(argv)
    parser, subparsers = _top_parser()              # the chosen command's full parser
    importlib.import_module(COMMANDS[command.command][0]).add_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:         # `memrl train --dry-run | head` closed our stdout: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())    # (Python's own advice)
        return 1


if __name__ == "__main__":
    sys.exit(main())
