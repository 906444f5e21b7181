"""The `effnet` command line: a thin table from sub-command to library function.

Each sub-command module exposes ``register(subparsers)`` and sets ``func`` on its parser; the
function parses nothing itself, calls the library and prints. Heavy imports stay inside the
command functions so that `effnet --help` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

#: Modules contributing sub-commands, in help order.
COMMAND_MODULES = (
    "effnet.commands.profile",  # list, profile, table
    "effnet.commands.scale",    # scale, scale grid | search | study | fit
    "effnet.commands.weights",  # convert, pretrained
    "effnet.commands.train",    # train, eval, predict
    "effnet.commands.search",   # search
    "effnet.commands.deploy",   # export
    "effnet.commands.viz",      # cam, plot
    "effnet.commands.bench",    # bench
)


def build_parser() -> argparse.ArgumentParser:
    from effnet import __version__

    parser = argparse.ArgumentParser(
        prog="effnet", description="EfficientNet V1/V2 and compound scaling for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"effnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # that command group is not installed
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (`effnet list | head`): stop quietly, as Unix tools do. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise the same error again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    except (ValueError, FileNotFoundError, NotADirectoryError, RuntimeError) as e:
        # Library errors carry a message saying what is wrong and what to do: show it plainly.
        if args.verbose:
            raise
        print(f"effnet {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
