"""A lean HTTP/1.1 load generator for the benchmarks: pre-encoded requests over keep-alive asyncio
streams, one connection per simulated client, closed loop.

httpx's connection pool costs the client about 1 ms of CPU a request at 32 connections and 6 ms at
64 (bench/RESULTS.md, session 8): on a 2-core box that client competes with the server it measures.
This one sends bytes built once by httpx (so headers, bodies and multipart are httpx's own) and
reads the status line, the headers and a Content-Length or chunked body: about a tenth of that CPU.
Every response is read whole and its status counted, so errors still show."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx


def encode(request: httpx.Request) -> bytes:
    """The request's bytes on the wire (HTTP/1.1, keep-alive)."""
    body = request.read()
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response whole; return its status and whether the server closes the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


class Connection:
    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        status, close = await _read_response(self.reader)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(
    base_url: str,
    requests: Sequence[bytes],
    concurrency: int,
    duration: float,
    max_requests: int,
    summarize: Callable[[list[float], float, dict[int, int]], dict[str, Any]],
) -> dict[str, Any]:
    """``concurrency`` connections each send the next of ``requests`` (round robin) as soon as the
    previous answer is read, for ``duration`` seconds or ``max_requests`` requests in all."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    sent = 0
    connections = [Connection(base_url) for _ in range(concurrency)]
    await asyncio.gather(*(c.send(requests[i % len(requests)]) for i, c in enumerate(connections)))  # connect, warm
    deadline = time.perf_counter() + duration

    async def loop(connection: Connection) -> None:
        nonlocal sent
        while time.perf_counter() < deadline and sent < max_requests:
            raw = requests[sent % len(requests)]
            sent += 1
            started = time.perf_counter()
            try:
                status = await connection.send(raw)
            except (ConnectionError, asyncio.IncompleteReadError):
                connection.close()
                status = 599  # the connection broke: counted as an error, the client reconnects
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return summarize(latencies, elapsed, errors)
