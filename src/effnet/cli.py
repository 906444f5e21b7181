"""The `effnet` command line: a thin table from sub-command to library function.

Each sub-command module exposes ``register(subparsers)`` and sets ``func`` on its parser; the
function parses nothing itself, calls the library and prints. Heavy imports stay inside the
command functions so that `effnet --help` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys
import traceback
from pathlib import Path

from effnet.hostmem import enable_huge_pages

#: Each command and the module that registers it, in help order. A command line that names its
#: command loads only that module (``effnet train`` never imports the lab, the search or the
#: benchmark); ``effnet --help`` and an unknown command load them all. tests/test_cli.py checks
#: that this table names exactly what the modules register.
COMMANDS: dict[str, str] = {
    "list": "effnet.commands.profile", "profile": "effnet.commands.profile", "table": "effnet.commands.profile",
    "scale": "effnet.commands.scale",  # with its actions: grid, search, study, fit
    "convert": "effnet.commands.weights", "pretrained": "effnet.commands.weights",
    "train": "effnet.commands.train", "eval": "effnet.commands.train", "predict": "effnet.commands.train",
    "search": "effnet.commands.search",
    "export": "effnet.commands.deploy",
    "cam": "effnet.commands.viz", "plot": "effnet.commands.viz",
    "bench": "effnet.commands.bench",
}
#: Modules contributing sub-commands, in help order.
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


def _command_of(argv: list[str]) -> str | None:
    """The sub-command an argument list names: its first word that is not an option (the
    top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of ``command`` when it is a known one."""
    from effnet import __version__

    parser = argparse.ArgumentParser(
        prog="effnet", description="EfficientNet V1/V2 and compound scaling for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"effnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also EFFNET_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # that command group is not installed
                continue
            raise
        module.register(sub)
    return parser


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` or ``EFFNET_DEBUG=1``: show tracebacks instead of one line."""
    if args is not None and getattr(args, "debug", False):
        return True
    return os.environ.get("EFFNET_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


#: Plain words for the operating-system errors a user can fix, by errno.
_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device while writing {path}: free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded while writing {path}: free some space or write elsewhere",
    errno.EACCES: "permission denied: {path}; check its permissions or choose another path",
    errno.EPERM: "operation not permitted on {path}; check its permissions or choose another path",
    errno.EROFS: "{path} is on a read-only file system; choose another path",
    errno.EISDIR: "{path} is a folder; expected a file",
    errno.ENOTDIR: "{path}: a part of this path is a file, not a folder",
    errno.ENOENT: "no such file or folder: {path}",
    errno.EEXIST: "{path} already exists: choose another path (or pass --overwrite where the command has it)",
    errno.ENAMETOOLONG: "file name too long: {path}",
}


def _raised_by_effnet(e: BaseException) -> bool:
    """Whether ``e`` was raised by effnet's own code (its message was written for the user)
    rather than inside a library it calls (torch, yaml, PIL ...), judged by the innermost frame."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def describe_error(e: BaseException) -> str:
    """One line for the user: effnet's own messages as they are, operating-system errors in
    plain words with the path, anything else with its type and a pointer to ``--debug``."""
    if isinstance(e, OSError) and e.errno is not None and e.strerror and e.strerror != os.strerror(e.errno):
        return e.strerror  # an OSError effnet raised with its own words (effnet.files.check_output)
    if isinstance(e, OSError) and e.errno in _OS_ERRORS:
        path = e.filename if e.filename is not None else ""
        if e.filename2 is not None:
            path = f"{path} -> {e.filename2}"
        if path and e.errno == errno.EEXIST and e.filename2 is None:
            # mkdir(parents=True) under a file reports the whole path as existing: name the file.
            parent = next((p for p in Path(path).parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                return f"cannot write {path}: {parent} is a file, not a folder"
        if path:
            return _OS_ERRORS[e.errno].format(path=path)
        if e.errno == errno.ENOSPC:
            return "no space left on the device: free some space or write elsewhere"
    text = " ".join(str(e).split()) or type(e).__name__
    # (A TypeError or KeyError inside effnet is an operation that met a wrong value, not a message.)
    if isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError,
                      RuntimeError)) and _raised_by_effnet(e):
        return text
    if isinstance(e, OSError):
        return f"{text} (run with --debug for the traceback)"
    return f"{type(e).__name__}: {text} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    # Before anything imports torch: its CPU allocator reads this once (effnet.hostmem says why).
    enable_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    # --debug is honoured wherever it stands (`effnet predict ... --debug` too), not only first.
    debug_anywhere = "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"])
    debug = debug_anywhere or debug_requested(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    if not args.verbose:
        # INFO is for effnet's own progress lines; torch's INFO loggers would otherwise speak too
        # (its FakeTensor cache statistics at exit after a Ctrl-C, for one).
        logging.getLogger("torch").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # The one error boundary of the command line: whatever a command raises ends as one line
    # `effnet CMD: error: ...` and a non-zero exit; --debug (or EFFNET_DEBUG=1) adds the traceback.
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (`effnet list | head`): stop quietly, as Unix tools do. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise the same error again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"effnet {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for Ctrl-C
    except Exception as e:  # noqa: BLE001 (the boundary: every error becomes one line)
        if debug:
            traceback.print_exc()
        print(f"effnet {args.command}: error: {describe_error(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
