"""A TCP proxy a test puts between one agent and one etcd member, to partition them (stdlib only).

    from testkit.proxy import Proxy

    with Proxy("127.0.0.2", etcd_client_port) as proxy:   # listens on 127.0.0.1:<free port>
        endpoint = f"http://{proxy.address}"                # give this to the agent instead
        proxy.freeze()   # a partition: nothing passes either way on established connections, new
                         # connections are accepted and nothing passes on them; nothing is closed
        proxy.thaw()     # what was held flows on; connections accepted meanwhile reach the target
        proxy.cut()      # every connection reset (RST), the port closed: new connections refused
        proxy.thaw()     # accepting again, on the same port
    # close() (or the with block's end): everything closed, the thread gone

Both addresses must be loopback (127.0.0.0/8 or ::1). The listening port is taken from
`testkit.helpers.free_ports` (below the ephemeral range) unless given.

It runs its own event loop on its own thread: the methods are synchronous, have taken effect when
they return (a freeze stops reading and writing on every connection before `freeze()` returns),
and can be called from synchronous tests and from async ones alike (they block the caller for the
millisecond the proxy's thread takes to apply them). Bytes already handed to the kernel before a
freeze are delivered; whatever is read after it is held, in order, until `thaw()`. While frozen an
EOF or a close on one side is held too: the other side learns of it at `thaw()`, as after a real
partition heals. `forwarded` counts the bytes that went through each way, `accepted` the
connections accepted, `connections` those open now.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar, cast

from testkit.helpers import free_ports

T = TypeVar("T")
State = Literal["flowing", "frozen", "cut", "closed"]


def _loopback(host: str) -> str:
    host = "127.0.0.1" if host == "localhost" else host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"{host!r} is not a loopback address: the proxy only talks to 127.0.0.0/8 and ::1")


class _End(asyncio.Protocol):
    """One socket of a proxied connection: the client's (accepted) or the target's (dialled)."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.held: list[bytes | None] = []
        """Read and not yet forwarded (frozen, or the other end not connected yet); None: its EOF."""
        self.blocked = False
        """Its write buffer is full: the other end stops reading until it drains."""
        self.reading = True
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.link.made(self)

    def data_received(self, data: bytes) -> None:
        self.held.append(data)
        self.link.pump()

    def eof_received(self) -> bool:
        self.eof = True
        self.held.append(None)
        self.link.pump()
        return True  # keep the other direction open: forwarded as a half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.link.pump()

    def pause_writing(self) -> None:
        self.blocked = True
        self.link.pump()

    def resume_writing(self) -> None:
        self.blocked = False
        self.link.pump()

    def set_reading(self, on: bool) -> None:
        if self.transport is None or self.lost or self.transport.is_closing() or on == self.reading:
            return
        self.reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def abort(self) -> None:
        """Close at once, with a reset (SO_LINGER 0) rather than a FIN."""
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class _Link:
    """A client's connection and its connection to the target."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client = _End(self)
        self.target = _End(self)
        self.dialling: asyncio.Task[None] | None = None
        self.done = False

    def made(self, end: _End) -> None:
        if end is self.client:
            self.proxy._links.add(self)
            self.proxy.accepted += 1
            self.dial()
        self.pump()

    def dial(self) -> None:
        """Connect to the target, unless frozen (a partition lets no handshake through: the target
        sees the connection only once thawed)."""
        if self.dialling is None and self.proxy._state == "flowing" and not self.client.lost:
            self.dialling = asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self.target, self.proxy.target_host, self.proxy.target_port)
        except OSError:
            self.client.abort()  # the target refuses: so does the proxy, as far as it can
            self.close()

    def pump(self) -> None:
        """Forward what is held, and read only what can be forwarded."""
        if self.done:
            return
        flowing = self.proxy._state == "flowing"
        connected = self.target.transport is not None
        for src, dst in ((self.client, self.target), (self.target, self.client)):
            if flowing and connected:
                while src.held and dst.transport is not None and not dst.lost:
                    data = src.held.pop(0)
                    if data is None:
                        if dst.transport.can_write_eof():
                            dst.transport.write_eof()
                    else:
                        dst.transport.write(data)
                        self.proxy.forwarded["up" if src is self.client else "down"] += len(data)
                if src.lost and not src.held and dst.transport is not None and not dst.transport.is_closing():
                    dst.transport.close()  # the close passes too, after what was written
            src.set_reading(flowing and connected and not dst.blocked and not src.eof)
        client, target = self.client, self.target
        if client.lost and not connected and self.dialling is None:
            self.close()  # gone before it reached the target: nothing to tell it
        elif client.lost and target.lost:
            self.close()
        elif flowing and connected and not client.held and not target.held and client.eof and target.eof:
            self.close()  # both sides shut down, everything forwarded

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        self.proxy._links.discard(self)
        for end in (self.client, self.target):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.close()

    def cut(self) -> None:
        self.client.abort()
        self.target.abort()
        if self.dialling is not None:
            self.dialling.cancel()
        self.done = True
        self.proxy._links.discard(self)


class Proxy:
    """Forwards 127.0.0.x:`port` to `target_host`:`target_port`; see the module's docstring."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "proxy",
    ) -> None:
        self.target_host, self.target_port = _loopback(target_host), target_port
        self.host = _loopback(host)
        self.port = port if port is not None else free_ports(1)[0]
        self.name = name
        self.accepted = 0
        self.forwarded = {"up": 0, "down": 0}
        """Bytes forwarded client -> target ("up") and target -> client ("down")."""
        self._state: State = "flowing"
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"proxy-{name}-{self.port}", daemon=True)
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self._call(self._shutdown())
            self._stop_thread()
            raise

    def __repr__(self) -> str:
        return f"<Proxy {self.name} {self.address} -> {self.target_host}:{self.target_port} {self._state}>"

    @property
    def address(self) -> str:
        """`host:port` to connect to (an URL's authority)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def state(self) -> State:
        return self._state

    @property
    def connections(self) -> int:
        """Connections open now (accepted and not closed)."""
        return len(self._links)

    def freeze(self) -> None:
        """A partition: no byte passes either way on any connection, new connections are accepted
        and reach nothing; nothing is closed. Undone by thaw()."""
        self._call(self._set("frozen"))

    def thaw(self) -> None:
        """Traffic flows again: held bytes are forwarded, connections accepted while frozen are
        connected to the target; after a cut, the port accepts connections again."""
        self._call(self._set("flowing"))

    def cut(self) -> None:
        """Reset every connection and close the port (new connections are refused) until thaw()."""
        self._call(self._set("cut"))

    def close(self) -> None:
        """Close everything and end the thread. Idempotent."""
        if self._state == "closed":
            return
        self._call(self._shutdown())
        self._stop_thread()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # on the proxy's thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError(f"{self!r} is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def _stop_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Link(self).client, self.host, self.port, reuse_address=True
            )

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _set(self, state: State) -> None:
        if self._state == "closed":
            raise RuntimeError(f"{self!r} is closed")
        self._state = state
        if state == "cut":
            await self._unlisten()
            for link in list(self._links):
                link.cut()
        else:
            await self._listen()
            for link in list(self._links):
                link.dial()
                link.pump()
        await asyncio.sleep(0)  # let the transports act on it (pause/resume reading, resets)

    async def _shutdown(self) -> None:
        if self._state != "closed":
            self._state = "cut"
            await self._unlisten()
            for link in list(self._links):
                link.cut()
            self._state = "closed"
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):  # connection_lost callbacks of the aborted transports
            await asyncio.sleep(0)
