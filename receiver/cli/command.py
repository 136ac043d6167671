"""What every command shares: how it says it cannot do its work, and how it was started.

:class:`CommandError` is a problem that stops a command before or instead of its work (no
database where the config points, nothing answering at a URL, a refused token): ``main`` prints
its message as one line, ``metastudio-receiver: ...``, and exits 2. The message says what is
wrong and what to do. :func:`invoked_as` is the command line that started this process
(``.venv/bin/metastudio-receiver``, ``metastudio-receiver`` when that is what the shell finds, or
``python -m receiver``), so the follow-up commands a command prints run as printed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from receiver.errors import ReceiverError

EXIT_CANNOT = 2
PROG = "metastudio-receiver"


class CommandError(ReceiverError):
    """The command cannot do its work; the message says why and what to do (exit 2)."""

    code = "RCV.COMMAND_FAILED"


def invoked_as(argv0: str | None = None, executable: str | None = None) -> str:
    """How to start this program again, as a shell word or two, from the working directory."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    name = os.path.basename(argv0)
    if name.startswith(PROG) and not name.endswith(".py"):
        # The console script: as typed when a path was typed, by name when the shell finds it.
        found = shutil.which(name)
        if found and os.path.exists(argv0) and os.path.samefile(found, argv0):
            return name
        return shlex.quote(argv0)
    # python -m receiver (argv0 is receiver/__main__.py), or anything else: the interpreter.
    python = os.path.basename(executable)
    found = shutil.which(python)
    same = found is not None and os.path.exists(executable) and os.path.samefile(found, executable)
    return f"{python if same else shlex.quote(executable)} -m receiver"


def command_line(*words: str, config: str | None = None) -> str:
    """A follow-up command to print: this program, ``words``, and ``--config`` when given."""
    parts = [invoked_as(), *(shlex.quote(word) for word in words)]
    if config:
        parts += ["--config", shlex.quote(config)]
    return " ".join(parts)
