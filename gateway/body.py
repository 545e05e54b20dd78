"""Reading a request body within the gateway's bounds: its size (``gateway.max_body_bytes``),
its time (``gateway.body_timeout_s``) and the bytes all requests of the replica may hold
together (``gateway.max_inflight_body_bytes``). Work per request, never per event.

A body is admitted with its declared Content-Length before a byte of it is read (a chunked one
chunk by chunk), and its bytes stay counted until its request is answered: a replica's request
bodies never hold more than the bound, whatever their clients do. A body that has not arrived
in full within the timeout is refused with 408 and its connection closed; a client that leaves
mid-body raises ``ClientDisconnectedError``. Either way nothing of the request is produced.

The timeout is kept by one watcher task for all requests (``BodyDeadlines``), not by a timer
per request: ``asyncio.timeout`` cost ~10 us per request (a timer handle made and cancelled,
measured under uvloop), a deadline in a dict costs well under one.
"""

from __future__ import annotations

import asyncio
from typing import Final

from starlette.types import Receive

from gateway.exceptions import ClientDisconnectedError, Problem, RequestRejectedError


class InflightBodies:
    """Body bytes this replica's requests hold or were admitted for. One per app, used on the
    event loop only (no lock)."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


class BodyClaim:
    """One request's share of ``InflightBodies``; ``release`` it when the request is done,
    however it ends."""

    __slots__ = ("_pool", "held")

    def __init__(self, pool: InflightBodies) -> None:
        self._pool = pool
        self.held = 0

    def take(self, size: int, retry_after: str) -> None:
        pool = self._pool
        if pool.held + size > pool.limit:
            raise RequestRejectedError(
                429, "gateway_busy",
                f"request bodies in flight hold {pool.held} bytes: {size} more would pass this "
                f"replica's bound of {pool.limit} bytes; retry later",
                headers={"retry-after": retry_after})
        pool.held += size
        self.held += size

    def release(self) -> None:
        self._pool.held -= self.held
        self.held = 0


# How often the watcher looks: a late body gets its 408 within this much after its deadline.
WATCH_INTERVAL_S: Final = 0.25


class BodyDeadlines:
    """The tasks reading a body and when each must be done. ``watch`` (one task per app, on
    the event loop) cancels those past their deadline and marks them ``expired``."""

    __slots__ = ("expired", "reading")

    def __init__(self) -> None:
        self.reading: dict[asyncio.Task[object], float] = {}
        self.expired: set[asyncio.Task[object]] = set()

    async def watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            if not self.reading:
                continue
            now = loop.time()
            for task, deadline in list(self.reading.items()):
                if deadline <= now and task not in self.expired:
                    # Suspended inside BodyReader.read (a task leaves ``reading`` as it leaves
                    # the read), so the cancellation lands there and becomes a 408.
                    self.expired.add(task)
                    task.cancel()


class BodyReader:
    """Reads one request's body into bytes, or raises the refusal that applies. The app runs
    ``deadlines.watch()`` while it serves."""

    def __init__(self, max_bytes: int, timeout_s: float, retry_after: str) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.retry_after = retry_after
        self.deadlines = BodyDeadlines()

    async def read(self, header: str | None, receive: Receive, claim: BodyClaim) -> bytes:
        """The body from ASGI ``receive`` messages; ``header`` is the request's
        Content-Length, if any."""
        limit = self.max_bytes
        declared: int | None = None
        if header is not None:
            if not header.isdigit():
                raise RequestRejectedError(400, "invalid_request", "bad Content-Length",
                                           [Problem(None, "Content-Length", "not a number")])
            declared = int(header)
            if declared > limit:
                raise too_large(declared, limit)
            claim.take(declared, self.retry_after)  # 429 before a byte of it is read
        chunks: list[bytes] = []
        received = 0
        task = asyncio.current_task()
        assert task is not None
        reading = self.deadlines.reading
        # From the handler's start, i.e. right after the request's headers arrived.
        reading[task] = asyncio.get_running_loop().time() + self.timeout_s
        try:
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect: the client left
                    raise ClientDisconnectedError(received, declared)
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if not chunk:
                    continue
                received += len(chunk)
                if received > limit:
                    raise too_large(received, limit)
                if declared is None:
                    claim.take(len(chunk), self.retry_after)
                chunks.append(chunk)
        except asyncio.CancelledError:
            if task not in self.deadlines.expired:
                raise  # not ours: the request is being cancelled
            task.uncancel()
            expected = "?" if declared is None else str(declared)
            raise RequestRejectedError(
                408, "body_timeout",
                f"the request body did not arrive within {self.timeout_s:g}s "
                f"({received} of {expected} bytes)",
                [Problem(None, "$", f"body incomplete after {self.timeout_s:g}s")],
                headers={"connection": "close"}) from None
        finally:
            del reading[task]
            if self.deadlines.expired:
                self.deadlines.expired.discard(task)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(size: int, limit: int) -> RequestRejectedError:
    return RequestRejectedError(
        413, "payload_too_large", f"body of {size}+ bytes is over the limit of {limit} bytes",
        [Problem(None, "$", f"body larger than {limit} bytes")])
