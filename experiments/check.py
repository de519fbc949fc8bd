"""`memrl check NAME [--set KEY=VALUE ...] [--imports MODULE ...]`: the interface laws on a
registered memory model.

    memrl check gru
    memrl check lmu --set memory_size=8 --set layers=2     # the model's keywords (YAML values)
    memrl check my_cell --imports my_cells          # a model registered in your own module

Runs `memory_models.laws` (the code tests/test_laws.py runs on every built-in model) law by
law in every dtype the model accepts, and prints each law's verdict; a failing law prints
the numbers it measured. Exit status 0 when every law holds, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.rllib import workers


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check", help="run the interface laws on a registered memory model",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="registered memory name, e.g. gru")
    parser.add_argument("--set", dest="keywords", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a keyword of the model (`memrl models NAME` lists them, `layers` "
                             "too), the value read as YAML: memory_size=8; repeatable")
    parser.add_argument("--imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers the model); a module name "
                             "(my_cells), found in the current folder or on the Python path; "
                             "repeatable")
    parser.set_defaults(func=run)


def model_keywords(name: str, items: list[str]) -> dict:
    """`--set KEY=VALUE` items -> the model's keywords; ValueError naming a malformed item, a
    value that is not YAML, or a keyword `name` does not take (with the ones it takes)."""
    import memory_models
    from experiments.study.errors import ConfigError
    from experiments.study.overrides import parse_value

    keywords = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. memory_size=8")
        try:
            keywords[key] = parse_value(text)
        except ConfigError as error:
            raise ValueError(f"--set {key}: {error}") from None
    memory_models.make(name, input_size=4, hidden_size=6, **keywords)   # the values' own checks
    return keywords


def import_user_modules(command: str, modules: list[str]) -> bool:
    """Import `--imports` modules (from the current folder or the Python path); False, with
    the reason on stderr, if one cannot be imported."""
    for module in modules:
        if module.endswith(".py") or "/" in module or "\\" in module:
            print(f"memrl {command}: --imports {module!r}: expected a module name, not a path "
                  f"(e.g. `cd {Path(module).parent or '.'} && memrl {command} ... --imports "
                  f"{Path(module).stem}`, or put its folder on PYTHONPATH)", file=sys.stderr)
            return False
        try:
            workers.import_modules([module], str(Path.cwd()))
        except Exception as error:  # noqa: BLE001 - reported as bad input
            print(f"memrl {command}: cannot import {module!r}: {type(error).__name__}: {error}",
                  file=sys.stderr)
            return False
    return True


def run(args) -> int:
    if not import_user_modules("check", args.imports):
        return 2
    import memory_models
    from memory_models import laws

    if args.name not in memory_models.available():
        print(f"memrl check: unknown memory model {args.name!r}; available: "
              f"{memory_models.available()} (register yours with "
              f"@memory_models.register and pass --imports MODULE)", file=sys.stderr)
        return 2
    try:
        keywords = model_keywords(args.name, args.keywords)
    except (ValueError, TypeError) as error:
        print(f"memrl check: {error}", file=sys.stderr)
        return 2
    failures = 0
    for dtype in laws.accepted_dtypes(args.name):
        for law, check in laws.LAWS.items():
            try:
                check(args.name, dtype, **keywords)
            except AssertionError as error:
                failures += 1
                print(f"FAIL  {law:<42} {str(dtype):<15} {error}")
            else:
                print(f"ok    {law:<42} {dtype}")
    print(f"memrl check: {args.name}: "
          + (f"{failures} law check(s) failed" if failures else "every law holds"))
    return 1 if failures else 0
