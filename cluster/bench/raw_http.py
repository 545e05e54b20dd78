"""The load generators' HTTP/1.1 exchange on a raw keep-alive connection (``bench gateway``,
``bench latency``): an HTTP client library would cost more CPU per request than the gateway
being measured."""

from __future__ import annotations

import asyncio


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   payload: bytes) -> str:
    """Send one request on a keep-alive connection; read the whole response; its status."""
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return head[9:12].decode()
