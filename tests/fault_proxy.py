"""A TCP proxy in front of the real large-tier server that injects faults a real server cannot be
made to produce on demand: a stall before the first token, a dropped connection mid-stream, a 503."""

from __future__ import annotations

import asyncio
import threading


class FaultProxy:
    """Modes: ``pass`` (relay), ``stall`` (accept, never answer), ``cut`` (relay, then drop the
    connection after ``cut_after`` SSE events), ``error`` (answer 503 at once), ``garbage`` (answer
    200 with a stream whose event is valid JSON but not an object).

    ``requests`` counts the calls that reached the proxy (each on a connection of its own);
    ``hung_up`` the stalled calls whose connection the service closed, having given up waiting."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.cut_after = 4
        self.requests = 0
        self.hung_up = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        mode = self.mode
        try:
            if mode == "stall":
                while await reader.read(65536):  # never answer; read until the client hangs up
                    pass
                self.hung_up += 1
            elif mode == "error":
                await reader.read(65536)
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy")
                await writer.drain()
            elif mode == "garbage":
                await reader.read(65536)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                             b"data: [1, 2, 3]\n\ndata: [DONE]\n\n")
                await writer.drain()
            else:
                await self._relay(reader, writer, cut=mode == "cut")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: bool) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def forward() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        forwarding = asyncio.ensure_future(forward())
        events = 0
        try:
            while data := await up_reader.read(65536):
                if cut:
                    events += data.count(b"data:")
                    if events > self.cut_after:
                        return  # drop both connections mid-stream
                writer.write(data)
                await writer.drain()
        finally:
            forwarding.cancel()
            up_writer.close()
