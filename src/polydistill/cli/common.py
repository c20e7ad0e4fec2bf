"""What every command shares: the error console and the one error handler (one line, exit 2).

Messages are printed as plain text, never as Rich markup: a path like ``scan[raw]/`` or a hint like
``names: [floor, wall, ...]`` reaches the user exactly as written (markup would eat the brackets, and ``[/]`` in
a path would crash the printer itself).
"""

from __future__ import annotations

import errno
import functools
import re

import typer
from rich.console import Console
from rich.text import Text

from ..errors import PolydistillError

console = Console(stderr=True)

#: a full disk, a read-only file system, no permission, a quota: the user fixes the storage, not the code
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT}


def error_message(exc: BaseException) -> str:
    """The user's message of ``exc``. An error raised in a DataLoader worker comes back wrapped with the worker's
    traceback ("Caught DataError in DataLoader worker process 1. Original Traceback ..."): keep its own line."""
    message = str(exc)
    if "Original Traceback" in message:
        own = re.compile(rf"^(?:[\w.]+\.)?{re.escape(type(exc).__name__)}: ")  # "polydistill.errors.DataError: "
        lines = message.rstrip().splitlines()
        for i in range(len(lines) - 1, -1, -1):
            start = own.match(lines[i])
            if start:
                return "\n".join([lines[i][start.end():], *lines[i + 1:]]).strip()
    return message


def print_error(message: str, label: str = "error:") -> None:
    """``label`` in bold red, then the message verbatim (no markup, no highlighting)."""
    console.print(Text.assemble((label, "bold red"), " ", message), soft_wrap=True, highlight=False)


def print_plain(message: str) -> None:
    """A progress line, verbatim."""
    console.print(Text(str(message)), soft_wrap=True, highlight=False)


def print_status(label: str, message: str = "", style: str = "bold green") -> None:
    """A status line: ``label`` styled, then paths and numbers verbatim (no markup)."""
    console.print(Text.assemble((label, style), message), soft_wrap=True, highlight=False)


def friendly_errors(fn):
    """Print user errors on one line and exit 2, instead of a traceback; anything else is a bug and keeps it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PolydistillError as exc:
            print_error(error_message(exc))
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:
                raise
            where = f"writing '{exc.filename}': " if exc.filename else ""
            print_error(f"{where}{exc.strerror} ({errno.errorcode[exc.errno]}); free space or choose a writable "
                        "--out, then run again (training continues with --resume)")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print(Text("interrupted", style="yellow"))
            raise typer.Exit(130) from None

    return wrapper
