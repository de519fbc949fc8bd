"""`memrl models [NAME] [--imports MODULE ...]`: the lineup of registered memories at a glance.

    memrl models                     every name: what it is, its keywords with their defaults,
                                     whether it integrates over elapsed time, its POPGym original
    memrl models ffm                 one model: its full description and every keyword
    memrl models --imports my_cells  your own registered memories too

Reads the registry (memory_models), so a memory registered in your module shows beside ours.
Imports PyTorch (the cells) but not Ray.
"""

from __future__ import annotations

import inspect
import re
import sys

from experiments.check import import_user_modules
from experiments.rllib.popgym_models import POPGYM_ORIGINAL


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the registered memory models",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="one registered name: its full keyword list")
    parser.add_argument("--imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers models); repeatable")
    parser.set_defaults(func=run)


def describe(name: str) -> dict:
    """name, summary (the class docstring's first sentence), keywords {name: default}, elapsed
    time (bool), POPGym original (or '')."""
    import memory_models

    cls = memory_models.get(name)
    doc = inspect.getdoc(cls) or ""
    keywords = {k: _default(v) for k, v in memory_models.keywords(name).items()}
    return {"name": name, "class": cls.__name__, "doc": doc, "keywords": keywords,
            "summary": _first_sentence(doc),
            "elapsed_time": cls.elapsed_time, "original": POPGYM_ORIGINAL.get(name, "")}


def _first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", paragraph)
    return match.group(1) if match else paragraph


def _default(value) -> str:
    return "required" if value is inspect.Parameter.empty else repr(value)


def lineup_table(names: list[str]) -> str:
    """One line per model: name, summary, keywords=defaults, elapsed time, POPGym original."""
    rows = [describe(n) for n in names]
    width = max(len(r["name"]) for r in rows)
    lines = []
    for r in rows:
        keywords = ", ".join(f"{k}={v}" for k, v in r["keywords"].items() if k != "layers")
        time = "elapsed time" if r["elapsed_time"] else "no elapsed time"
        original = f"  ~ {r['original']}" if r["original"] else ""
        lines.append(f"{r['name']:<{width}}  {r['summary']}")
        lines.append(f"{'':<{width}}    {time}{original}; keywords: {keywords or 'none'}")
    lines.append("every model also takes layers=N (residual blocks of the cell, default 1)")
    return "\n".join(lines)


def model_page(name: str) -> str:
    r = describe(name)
    keywords = "\n".join(f"  {k} = {v}" for k, v in r["keywords"].items())
    time = "integrates over integration_timesteps" if r["elapsed_time"] \
        else "ignores integration_timesteps"
    return (f"{name} ({r['class']})\n\n{r['doc']}\n\nkeywords (memory_kwargs):\n{keywords}\n"
            f"elapsed time: {time}\nPOPGym original: {r['original'] or 'none'}")


def run(args) -> int:
    if not import_user_modules("models", args.imports):
        return 2
    import memory_models

    if args.name is None:
        print(lineup_table(memory_models.available()))
        return 0
    if args.name not in memory_models.available():
        print(f"memrl models: unknown memory model {args.name!r}; available: "
              f"{memory_models.available()}", file=sys.stderr)
        return 2
    print(model_page(args.name))
    return 0
