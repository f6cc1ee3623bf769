"""The service on the network: a listening socket, taken before anything is served (so a busy port is one
line), and uvicorn running the app on it until SIGTERM or Ctrl-C, which finish the requests in flight.

With a second socket, ``/health`` and ``/metrics`` are also served there by a listener with a thread and an event
loop of its own: the main event loop accepts, reads and refuses every connection of a burst in turn, and a
health check queued behind a thousand uploads can wait hundreds of milliseconds for its turn (measured in
benchmarks/README.md, "Burst"); the health thread only waits for the interpreter's lock."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from ..errors import InputError, OutputError
from .app import create_app, create_health_app
from .lingering import LingeringHttpToolsProtocol
from .service import Service



def listen(host: str, port: int, flag: str = "--port") -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port); :class:`InputError` or
    :class:`OutputError` in one line, naming the option ``flag`` that chose the port, when there is none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: not an address of this machine ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise OutputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another {flag} or stop "
                          "what uses it") from exc
    return sock


def url(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a listening socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(service: Service, sock: socket.socket, health_sock: socket.socket | None = None) -> None:
    """Serve ``service`` on ``sock`` (and its ``/health`` and ``/metrics`` on ``health_sock`` too, when given) until
    SIGTERM or Ctrl-C, then finish the requests in flight and return. Closes the service and the sockets."""
    health = None if health_sock is None else _HealthListener(service, health_sock)
    try:
        config = uvicorn.Config(create_app(service), log_config=None, lifespan="on", access_log=False,
                                http=LingeringHttpToolsProtocol,
                                timeout_graceful_shutdown=service.options.shutdown_grace, server_header=False)
        main_server = _Server(config)
        if health is not None:
            main_server.on_exit = health.draining.set
            health.start()
        main_server.run(sockets=[sock])
    finally:
        if health is not None:
            health.stop()
        service.close()  # (already closed by the app's shutdown, unless start-up failed)
        sock.close()


class _HealthListener:
    """``/health`` and ``/metrics`` on a socket of their own, served from a daemon thread (see the module's
    docstring). ``draining`` makes ``/health`` answer 503 from when the main server starts shutting down."""

    def __init__(self, service: Service, sock: socket.socket) -> None:
        self.draining = threading.Event()
        self._sock = sock
        config = uvicorn.Config(create_health_app(service, self.draining), log_config=None, lifespan="off",
                                access_log=False, server_header=False)
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="health",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()


class _Server(uvicorn.Server):  # type: ignore[misc]
    """uvicorn's Server, except that after its graceful shutdown on SIGTERM or Ctrl-C it returns (and the
    command exits 0) instead of raising the signal again, which would end the process before it says so."""

    on_exit: Callable[[], None] | None = None  # called when a signal starts the graceful shutdown

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.on_exit is not None:
            self.on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
