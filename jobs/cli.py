"""The ``fskp`` command line.  One module per subcommand in ``jobs/commands``; each has

    HELP = "one line for `fskp --help`"
    def register(parser): ...   # add its arguments (no heavy imports here, so --help is instant)
    def run(args) -> int: ...   # do the work (imports torch, ray, mlflow inside)
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: the order `fskp --help` lists subcommands in; any other module in jobs/commands follows alphabetically
ORDER = ("quickstart", "label", "train", "evaluate", "predict", "reproduce", "tune-coefficients", "table",
         "synth", "prepare", "download", "select", "cards")


def command_names() -> list[str]:
    import pkgutil

    import jobs.commands

    found = [m.name.replace("_", "-") for m in pkgutil.iter_modules(jobs.commands.__path__) if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fskp", description="Few-shot, geometry-aware keypoint localization on Ray (He et al., CVPR 2023).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_names():
        module = importlib.import_module(f"jobs.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.register(p)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.card import CardError
    from pipeline.prepared import DataError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (DataError, CardError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"fskp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fskp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
