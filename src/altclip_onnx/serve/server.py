"""The service on the network: a listening socket, taken before anything is served (so a busy port is one
line), and uvicorn running the app on it until SIGTERM or Ctrl-C, which finish the requests in flight."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from ..errors import InputError, OutputError
from .app import create_app
from .lingering import LingeringHttpToolsProtocol
from .service import Service



def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port); :class:`InputError` or
    :class:`OutputError` in one line when there is none."""
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
        raise OutputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or stop "
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


def run(service: Service, sock: socket.socket) -> None:
    """Serve ``service`` on ``sock`` until SIGTERM or Ctrl-C, then finish the requests in flight and return.
    Closes the service and the socket."""
    try:
        config = uvicorn.Config(create_app(service), log_config=None, lifespan="on", access_log=False,
                                http=LingeringHttpToolsProtocol,
                                timeout_graceful_shutdown=service.options.shutdown_grace, server_header=False)
        _Server(config).run(sockets=[sock])
    finally:
        service.close()  # (already closed by the app's shutdown, unless start-up failed)
        sock.close()


class _Server(uvicorn.Server):  # type: ignore[misc]
    """uvicorn's Server, except that after its graceful shutdown on SIGTERM or Ctrl-C it returns (and the
    command exits 0) instead of raising the signal again, which would end the process before it says so."""

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
