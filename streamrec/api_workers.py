"""Several API worker processes on one port, each with its own ``SO_REUSEPORT`` socket.

Why not uvicorn's own ``workers=N``: its workers share one listening socket, and asyncio
accepts every pending connection in one wake-up, so a burst of keep-alive connections lands
on a single worker. bench/api_load.py's 8 clients all went to one of 2 workers (counted with
``ss``) and the second worker sat idle. With one socket per worker in a ``SO_REUSEPORT``
group the kernel spreads new connections over the workers by a hash of their addresses.

:class:`WorkerSupervisor` starts the workers (``multiprocessing`` spawn), restarts one that
dies, and stops them all on SIGINT/SIGTERM. A worker that fails at start-up (exit status 3,
uvicorn's start-up failure) stops the supervisor rather than restarting in a loop.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

#: uvicorn's exit status when the app fails to start (``uvicorn.config.STARTUP_FAILURE``).
STARTUP_FAILURE = 3
#: Seconds a stopping worker gets to finish its requests before it is killed.
STOP_GRACE_S = 30.0


def reuse_port_supported() -> bool:
    """Whether this platform has ``SO_REUSEPORT`` (Linux, macOS, the BSDs; not Windows)."""
    return hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` in the port's ``SO_REUSEPORT`` group, not yet
    listening (uvicorn's ``create_server`` calls ``listen``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror} (another "
                                 "server there? pick another --port)") from None
    return sock


def run_worker(host: str, port: int, uvicorn_kwargs: dict[str, Any]) -> None:
    """One worker process: its own socket, uvicorn serving ``uvicorn_kwargs['app']``."""
    import uvicorn

    sock = reuse_port_socket(host, port)
    config = uvicorn.Config(**uvicorn_kwargs)
    uvicorn.Server(config).run(sockets=[sock])


class WorkerSupervisor:
    """Runs ``workers`` processes of :func:`run_worker` on ``host:port`` until a signal.

    Args:
        workers: worker processes (>= 1).
        host, port: where every worker listens (``port`` 0: a free port, chosen once).
        uvicorn_kwargs: :class:`uvicorn.Config` arguments of each worker (the app as an
            import string, with ``factory=True`` for an app factory).
        target: the worker function (default :func:`run_worker`; tests pass another).
    """

    def __init__(self, workers: int, host: str, port: int, uvicorn_kwargs: dict[str, Any],
                 target: Callable[[str, int, dict[str, Any]], None] = run_worker) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers, self.host, self.uvicorn_kwargs = workers, host, uvicorn_kwargs
        self.target = target
        # Holding a bound (not listening) member of the group reserves the port while workers
        # come and go, and turns "address in use" into an error before any worker starts.
        self._reserved = reuse_port_socket(host, port)
        self.port = self._reserved.getsockname()[1]
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._stopping = False

    def __repr__(self) -> str:
        return f"WorkerSupervisor(workers={self.workers}, host={self.host!r}, port={self.port})"

    def _start(self) -> BaseProcess:
        process = self._context.Process(  # type: ignore[attr-defined]
            target=self.target, args=(self.host, self.port, self.uvicorn_kwargs),
            name="streamrec-api-worker")
        process.start()
        log.info("started API worker %d on %s:%d", process.pid, self.host, self.port)
        return process

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self, poll_s: float = 0.5) -> int:
        """Start the workers and watch them until SIGINT/SIGTERM; returns the exit status
        (0 after a signal, :data:`STARTUP_FAILURE` when a worker could not start). Call it
        from the main thread (it installs the signal handlers)."""
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            self._processes = [self._start() for _ in range(self.workers)]
            while not self._stopping:
                time.sleep(poll_s)
                for i, process in enumerate(self._processes):
                    if process.is_alive() or self._stopping:
                        continue
                    if process.exitcode == STARTUP_FAILURE:
                        log.error("API worker %d failed to start: stopping", process.pid)
                        self._stopping, status = True, STARTUP_FAILURE
                        break
                    log.error("API worker %d exited with %s: starting another", process.pid,
                              process.exitcode)
                    self._processes[i] = self._start()
        finally:
            self._shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._reserved.close()
        return status

    def _shutdown(self) -> None:
        for process in self._processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: uvicorn finishes open requests, then exits
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("API worker %d did not stop in %.0f s: killing it", process.pid,
                            STOP_GRACE_S)
                process.kill()
                process.join()


__all__ = ["STARTUP_FAILURE", "WorkerSupervisor", "reuse_port_socket", "reuse_port_supported",
           "run_worker"]
