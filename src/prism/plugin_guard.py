"""Running a plugin's code so that its failure is reported, not fatal.

Each load and each hook call runs under ``held_output`` and ``timed``, and a
failure (an exit included) is recorded on the plugin by ``isolate``; only
KeyboardInterrupt gets through. ``PRISM_STRICT_PLUGINS=1`` re-raises instead,
``PRISM_TRACE_PLUGINS=1`` traces every load and hook call on stderr.
"""

from __future__ import annotations

import io
import os
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Iterator

from prism.errors import PluginError

__all__ = ["failure", "held_output", "isolate", "strict", "timed", "trace", "tracing", "truthy"]


def truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def strict() -> bool:
    return truthy("PRISM_STRICT_PLUGINS")


def tracing() -> bool:
    return truthy("PRISM_TRACE_PLUGINS")


def trace(message: str) -> None:
    if tracing():
        sys.stderr.write(f"[prism plugins] {message}\n")
        sys.stderr.flush()


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Trace ``what`` with its duration (and its failure, which is re-raised)."""
    if not tracing():
        yield
        return
    started = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        trace(f"{what}: FAILED after {1000 * (time.perf_counter() - started):.1f} ms: "
               f"{type(exc).__name__}: {exc}")
        raise
    trace(f"{what}: {1000 * (time.perf_counter() - started):.1f} ms")


def failure(exc: BaseException, printed: str = "") -> str:
    """``Type: message`` of a plugin's failure; an exit says so and quotes what the plugin printed last."""
    if isinstance(exc, Exception):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SystemExit):
        text = f"SystemExit({exc.code!r}): the plugin tried to exit the process"
    else:
        text = f"{type(exc).__name__}" + (f": {exc}" if str(exc) else "") + \
            " (a BaseException, not an Exception)"
    last = next((line.strip() for line in reversed(printed.splitlines()) if line.strip()), "")
    return text + (f"; it printed: {last}" if last else "")


def isolate(errors: list[str], what: str, exc: BaseException, printed: str = "") -> None:
    """Record a plugin's failure in its ``errors``, or under PRISM_STRICT_PLUGINS raise it: an Exception as it
    is (its traceback is the point of strict mode), an exit as a PluginError (one message, exit 1)."""
    message = f"{what}: {failure(exc, printed)}"
    if strict():
        if isinstance(exc, Exception):
            raise exc
        raise PluginError(message, hint="unset PRISM_STRICT_PLUGINS to isolate the plugin") from exc
    errors.append(message)


@contextmanager
def held_output() -> Iterator[io.StringIO]:
    """Hold what a plugin prints while it loads (yields the held stderr).

    It is replayed to the same streams unless the plugin exits: then it is most
    likely argparse's usage message about prism's own arguments, which does not
    belong in the command's output (the error quotes its last line).
    """
    out, err = io.StringIO(), io.StringIO()
    exited = False
    try:
        with redirect_stdout(out), redirect_stderr(err):
            yield err
    except BaseException as exc:
        exited = not isinstance(exc, (Exception, KeyboardInterrupt))
        raise
    finally:
        if not exited:
            for held, stream in ((out, sys.stdout), (err, sys.stderr)):
                if held.getvalue():
                    stream.write(held.getvalue())
                    stream.flush()
