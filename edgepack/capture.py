"""Third-party output goes to a log file, edgepack's own lines to the terminal.

The toolchains print a lot that a user did not ask for: torchao's "Failed to load ... .so",
litert-torch's progress tree, absl/cpuinfo/XNNPACK lines from C++, Python warnings from inside
torch. Much of it is written by C++ straight to file descriptors 1 and 2, and the benchmark runs
in child processes, so redirecting `sys.stdout` is not enough: the descriptors themselves are
pointed at the log while a command runs, and edgepack's terminal writes to copies of the original
ones. `--verbose` leaves everything on the terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

LOG_NAME = "pack.log"


def _real_descriptors() -> bool:
    """True when sys.stdout/sys.stderr are the process's fds 1 and 2 (not a test runner's buffers)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def library_output_to_log(bind_terminal: Callable[[Optional[TextIO], Optional[TextIO]], None], *,
                          verbose: bool) -> Iterator[Optional[Path]]:
    """While the block runs, fds 1 and 2 (this process and its children) write to a temporary log
    whose path is yielded; `bind_terminal(out, err)` receives streams on the original terminal
    (and `None, None` afterwards). Yields None, changing nothing, with `verbose` or when the
    streams are not real descriptors (e.g. under click's CliRunner)."""
    if verbose or not _real_descriptors():
        yield None
        return
    handle, name = tempfile.mkstemp(prefix="edgepack-", suffix=".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal_out = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    terminal_err = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    bind_terminal(terminal_out, terminal_err)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    try:
        yield Path(name)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(handle)
        bind_terminal(None, None)
        terminal_out.close()
        terminal_err.close()
        Path(name).unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_python_output(*loggers: str) -> Iterator[None]:
    """Silence what a library prints from Python while the block runs: stdout/stderr writes, warnings,
    and records below ERROR on the named loggers ("" is the root logger). Output written by C++ to the
    file descriptors is handled by library_output_to_log, not here."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    stream = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
