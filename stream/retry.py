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


def is_outage(error: BaseException) -> bool:
    """True for errors that mean "the database is unreachable or busy", worth waiting out.

    >>> is_outage(sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused")))
    True
    >>> is_outage(ValueError("bad input"))
    False
    """
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, sa_exc.InterfaceError):
        return True
    if isinstance(error, sa_exc.OperationalError):
        # SQLite raises OperationalError for bugs too ("no such table"); only lock and file
        # trouble is worth waiting out there
        if type(error.orig).__module__.startswith("sqlite3"):
            text = str(error.orig).lower()
            return any(word in text for word in _SQLITE_TRANSIENT)
        return True
    return False


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
