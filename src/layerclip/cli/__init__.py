"""Command line: ``layerclip <command> ...``.

Each command lives in its own small module that declares its arguments
(``add_parser``) and runs them (``run``); this module only dispatches and turns
:class:`~layerclip.errors.LayerclipError` into a one-line message and exit code 2.
"""

import argparse
import logging
import sys

from .. import __version__
from ..errors import LayerclipError
from . import batch, clean, compare, demo, mask, report, restore
from . import info as info_cmd

__all__ = ["main"]

COMMANDS = [clean, demo, report, compare, restore, info_cmd, mask, batch]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="layerclip",
        description="Layered sigma-clipping outlier rejection for IFU cubes "
                    "(Hutchison et al. 2024).",
    )
    parser.add_argument("--version", action="version", version=f"layerclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv=None):
    """Run the command line; returns the exit code (0 ok, 2 refused input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args) or 0
    except LayerclipError as exc:
        print(f"layerclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"layerclip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
