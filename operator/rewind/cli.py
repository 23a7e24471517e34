"""The `rewind` command line (also installed as `kubectl-rewind`, so `kubectl rewind` works)."""

from __future__ import annotations

import argparse
import sys

from rewind import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewind",
        description="Rewind: roll a broken production system back to a known-good state.",
    )
    parser.add_argument("--version", action="version", version=f"rewind {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
