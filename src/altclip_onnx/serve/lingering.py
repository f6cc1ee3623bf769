"""A lingering close for answers given before the request body was read (a 413 or 429 from the headers).

Closing a TCP socket whose receive queue still holds bytes makes the kernel send a reset instead of an orderly
end. A client still uploading then gets ``ECONNRESET`` or ``EPIPE`` on its next write, and most clients (Python's
asyncio streams, httpx, urllib3) give up there without reading the answer that already arrived: a refusal
meant to say "retry after 10 s" reaches them as a lost connection. So, like nginx's ``lingering_close``, the
write side is shut first (the answer, then an end of stream) and what the client still sends is read and
dropped, unparsed, until it closes its side or :data:`LINGER_SECONDS` pass.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_SECONDS = 2.0  # how long a refused client may go on sending: enough to read the answer and stop
LINGER_RECEIVE_BUFFER = 4096  # bytes; in the burst benchmark, draining with the default buffer delayed /health


class _LingeringTransport:
    """The connection's transport, except that ``close()`` while the request body is still coming lingers."""

    def __init__(self, transport: asyncio.Transport, protocol: LingeringHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._timer: asyncio.TimerHandle | None = None
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        cycle = self._protocol.cycle
        unread = cycle is not None and cycle.more_body and not cycle.disconnected
        if self.lingering or not unread or self._transport.is_closing() or not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        sock = self._transport.get_extra_info("socket")
        if sock is not None:  # a small window: what is left to drop arrives in small pieces, the client soon waits
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LINGER_RECEIVE_BUFFER)
        self._transport.write_eof()  # after what is buffered: the answer, then the end of the stream
        self._protocol.flow.resume_reading()  # (uvicorn pauses reading while a body waits for the app)
        self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._transport.close)

    def forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class LingeringHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
    """uvicorn's httptools protocol with a lingering close (see the module's docstring)."""

    transport: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self))

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            return  # the rest of a refused body: dropped unparsed
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport.forget()  # (the client's end of stream closes the transport: eof_received returns None)
        super().connection_lost(exc)
