"""Retry with exponential back-off for database outages: wait, never skip."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import exc as sa_exc

T = TypeVar("T")
log = logging.getLogger(__name__)


class Stopped(RuntimeError):
    """A retry loop gave up because a stop was requested; the work was not done."""


def _driver_error(error: BaseException) -> BaseException:
    """The database driver's exception behind ``error`` (SQLAlchemy wraps it as ``orig``)."""
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        return error.orig
    return error


def _pep249_kinds(error: BaseException) -> set[str]:
    """PEP 249 class names (``OperationalError``, ``DataError``, ...) that ``error`` or the
    driver error behind it is an instance of; SQLAlchemy's wrappers use the same names, and
    the bulk paths raise the driver's own (psycopg, sqlite3) unwrapped."""
    return {cls.__name__ for e in (error, _driver_error(error)) for cls in type(e).__mro__}


def is_outage(error: BaseException) -> bool:
    """True for errors that mean "the database is unreachable or busy", worth waiting out.

    >>> is_outage(sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused")))
    True
    >>> is_outage(ValueError("bad input"))
    False
    """
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    kinds = _pep249_kinds(error)
    if "InterfaceError" in kinds:
        return True
    if "OperationalError" in kinds:
        # SQLite raises OperationalError for bugs too ("no such table"); only lock and file
        # trouble is worth waiting out there
        orig = _driver_error(error)
        if type(orig).__module__.startswith("sqlite3"):
            text = str(orig).lower()
            return any(word in text for word in _SQLITE_TRANSIENT)
        return True
    return False


def is_rejected_content(error: BaseException) -> bool:
    """True when the database or its driver refused a *value* of the batch (text it cannot
    encode or hold, a number out of range), so the same rows fail on every retry.

    Neither an outage nor a bug: the batch can be split until the offending row is found.

    >>> is_rejected_content(UnicodeEncodeError("utf-8", "\\ud800", 0, 1, "surrogates not allowed"))
    True
    >>> is_rejected_content(sa_exc.OperationalError("INSERT", {}, Exception("refused")))
    False
    """
    if isinstance(error, UnicodeError) or isinstance(_driver_error(error), UnicodeError):
        return True
    return not is_outage(error) and "DataError" in _pep249_kinds(error)


_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")


@dataclass
class RetryPolicy:
    """Exponential back-off: ``initial_s``, doubling up to ``max_delay_s``, forever by default.

    Args:
        initial_s: first wait in seconds (default 0.5).
        max_delay_s: cap on one wait in seconds (default 30).
        max_attempts: give up after this many failures and re-raise (default None: never).
    """

    initial_s: float = 0.5
    max_delay_s: float = 30.0
    max_attempts: int | None = None

    def call(
        self,
        fn: Callable[[], T],
        *,
        should_stop: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """Run ``fn`` until it succeeds; outages are retried, other errors propagate.

        Raises:
            Stopped: ``should_stop()`` turned true while waiting; ``fn`` did not succeed.
        """
        attempt = 0
        delay = self.initial_s
        while True:
            try:
                return fn()
            except Exception as error:
                if not is_outage(error):
                    raise
                attempt += 1
                if self.max_attempts is not None and attempt >= self.max_attempts:
                    raise
                log.warning(
                    "database unavailable (attempt %d), retrying in %.1fs: %s",
                    attempt, delay, str(error).splitlines()[0],
                )
                waited = 0.0
                while waited < delay:
                    if should_stop():
                        raise Stopped("stop requested while waiting for the database") from error
                    step = min(0.2, delay - waited)
                    sleep(step)
                    waited += step
                delay = min(delay * 2, self.max_delay_s)
