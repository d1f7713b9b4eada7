"""Third-party messages kept out of a command's normal output.

Exporters and runtimes print progress bars, version warnings and native-library logs (a CoreML
`--features` export printed about 36 such lines). `quiet()` swallows, for the block it guards,
Python warnings, log records below ERROR, and everything written to standard output and error,
by Python code and by native code (the file descriptors 1 and 2 are pointed at a scratch file);
a command prints its own results after the block. `quiet(verbose=True)` changes nothing.

    with quiet(verbose=args.verbose):
        result = export_model(...)
    print(result.summary())
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Silence third-party output inside the block unless `verbose`; exceptions pass through."""
    if verbose:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_fds: list[int] = []
    previous_disable = logging.root.manager.disable
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            for fd in (1, 2):
                try:
                    saved_fds.append(os.dup(fd))
                except OSError:  # no such descriptor (an embedded interpreter): Python-level only
                    break
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            _flush_c_stdio()  # what native code buffered goes to the scratch file, not later to the terminal
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            logging.disable(previous_disable)


def _flush_c_stdio() -> None:
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        pass
