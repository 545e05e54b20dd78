"""The chaos load client: posts batches to the gateway at a steady rate and retries each request
that was not acknowledged, with the same events, until the gateway acknowledges it.

A client that wants exactly-once from the pipeline behaves like this: after ``429`` or ``503``
(both carry ``Retry-After``), a ``502``/``504`` from the ingress, or a connection that failed or
dropped before an answer, it sends the very same events again (same ids), since it cannot know
whether Kafka stored them; the pipeline's retry window must drop the second copy. Each request
gives up after ``give_up_after_s`` (its events then count as not acknowledged, so as neither
lost nor kept). ``400``-class answers and ``500`` (Kafka refused the records for good) are not
retried.

``AckLog`` keeps what the client saw, for the accounting (the acknowledged ids) and for the
recovery measurement (per partition, the first offset acknowledged after the fault). It is
shared between the load thread and the driver, behind a lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import httpx
import msgspec

from actors.contract import Event
from cluster.chaos.accounting import Key
from gateway.responses import Accepted

Say = Callable[[str], None]

RETRIED_STATUSES: Final = frozenset({429, 502, 503, 504})
_FIRST_BACKOFF_S: Final = 0.2
MAX_RETRY_DELAY_S: Final = 10.0
_PROGRESS_EVERY_S: Final = 5.0
# Events acknowledged this close to the fault are all sent once more at the end: the clients
# whose answers a fault cut off retry exactly those. After the fault the window is longer than
# the gateway's metadata refresh (2 s), so it spans records hashed over an outdated partition
# count too.
RESEND_BEFORE_FAULT_S: Final = 1.0
RESEND_AFTER_FAULT_S: Final = 3.0


@dataclass(frozen=True)
class LoadSpec:
    url: str
    api_key: str | None = None
    rate: float = 1000.0              # events per second, first sends
    concurrency: int = 4              # requests in flight
    request_timeout_s: float = 30.0   # one attempt (the gateway answers within its deadline)
    give_up_after_s: float = 180.0    # all attempts of one request


def retry_delay(retry_after: str | None, attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: the server's ``Retry-After`` (seconds)
    when it sent a usable one, else exponential backoff from 0.2 s; at most 10 s."""
    if retry_after is not None:
        try:
            seconds = float(retry_after)
        except ValueError:
            seconds = -1.0  # an HTTP date or garbage: back off on our own
        if seconds >= 0:
            return min(seconds, MAX_RETRY_DELAY_S)
    return min(_FIRST_BACKOFF_S * 2.0 ** attempt, MAX_RETRY_DELAY_S)


class AckLog:
    """What the client saw. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._acknowledged: dict[Key, float] = {}  # key -> when first acknowledged
        self._sent: set[Key] = set()
        self._fault_at: float | None = None
        self._first_after: dict[int, int] = {}
        self._after: Counter[int] = Counter()  # partition -> events acknowledged after the fault
        self.retries: Counter[str] = Counter()  # reason -> attempts that were retried
        self.refused = 0       # events answered 4xx / 500: not retried, not acknowledged
        self.gave_up = 0       # events of requests retried past give_up_after_s

    # -- written by the load thread ------------------------------------------------------

    def sending(self, keys: Sequence[Key]) -> None:
        with self._lock:
            self._sent.update(keys)

    def accepted(self, keys: Sequence[Key], accepted: Accepted, at: float) -> None:
        with self._lock:
            for key in keys:
                self._acknowledged.setdefault(key, at)
            if self._fault_at is not None and at >= self._fault_at:
                first = self._first_after
                for result in accepted.results:
                    self._after[result.partition] += 1
                    known = first.get(result.partition)
                    if known is None or result.offset < known:
                        first[result.partition] = result.offset
            self._lock.notify_all()

    def retried(self, reason: str) -> None:
        with self._lock:
            self.retries[reason] += 1

    def not_acknowledged(self, events: int, *, gave_up: bool) -> None:
        with self._lock:
            if gave_up:
                self.gave_up += events
            else:
                self.refused += events

    # -- read by the driver --------------------------------------------------------------

    def mark_fault(self, at: float) -> None:
        """From now on, note per partition the first offset acknowledged (``first_after``)."""
        with self._lock:
            self._fault_at = at
            self._first_after = {}
            self._after.clear()

    def first_after(self) -> dict[int, int]:
        """Per partition, the lowest offset of the events acknowledged after the fault."""
        with self._lock:
            return dict(self._first_after)

    def after_fault(self) -> dict[int, int]:
        """Per partition, how many events were acknowledged there after the fault."""
        with self._lock:
            return dict(sorted(self._after.items()))

    def wait_for_partition(self, partition: int, timeout_s: float) -> bool:
        """Until an event is acknowledged in ``partition`` after the fault; False at the
        timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: partition in self._first_after, timeout_s)

    def acknowledged(self) -> set[Key]:
        with self._lock:
            return set(self._acknowledged)

    def acknowledged_around_fault(self, before_s: float, after_s: float) -> set[Key]:
        """Events first acknowledged from ``before_s`` before to ``after_s`` after the fault
        (none when no fault was marked)."""
        with self._lock:
            if self._fault_at is None:
                return set()
            low, high = self._fault_at - before_s, self._fault_at + after_s
            return {key for key, at in self._acknowledged.items() if low <= at <= high}

    def count(self) -> int:
        with self._lock:
            return len(self._acknowledged)

    def unacknowledged(self) -> int:
        """Distinct events sent at least once and never acknowledged."""
        with self._lock:
            return len(self._sent - self._acknowledged.keys())

    def wait_for(self, events: int, timeout_s: float) -> bool:
        """Until ``events`` distinct events were acknowledged; False at the timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._acknowledged) >= events, timeout_s)

    def retries_text(self) -> str:
        with self._lock:
            return ", ".join(f"{reason} x{n}" for reason, n in sorted(self.retries.items()))


def _keys(events: Sequence[Event]) -> list[Key]:
    return [(event.account_id, event.event_id) for event in events]


class LoadClient:
    """Posts batches at ``spec.rate`` events/s until told to stop, then re-sends, as clients
    retrying after an answer they did not get, every acknowledged event of ``retry_batches``
    and every event acknowledged close to the fault (``RESEND_*_FAULT_S``)."""

    def __init__(self, spec: LoadSpec, log: AckLog, say: Say) -> None:
        self._spec = spec
        self._log = log
        self._say = say
        self._decoder = msgspec.json.Decoder(Accepted)

    async def run(self, batches: Sequence[Sequence[Event]],
                  retry_batches: Sequence[Sequence[Event]], stop: threading.Event) -> None:
        spec = self._spec
        headers = {"content-type": "application/json"}
        if spec.api_key:
            headers["authorization"] = f"Bearer {spec.api_key}"
        limits = httpx.Limits(max_connections=spec.concurrency,
                              max_keepalive_connections=spec.concurrency)
        queue: asyncio.Queue[Sequence[Event] | None] = asyncio.Queue(maxsize=spec.concurrency)
        async with httpx.AsyncClient(base_url=spec.url, headers=headers, limits=limits,
                                     timeout=httpx.Timeout(spec.request_timeout_s)) as client:

            async def worker() -> None:
                while (batch := await queue.get()) is not None:
                    await self._post_until_acknowledged(client, batch)

            workers = [asyncio.create_task(worker()) for _ in range(spec.concurrency)]
            reporter = asyncio.create_task(self._report())
            try:
                await self._pace(queue, batches, stop)
                # The pipeline must drop these copies of events it already acknowledged.
                for batch in self._resends(batches, retry_batches):
                    await queue.put(batch)
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
            finally:
                reporter.cancel()
                for task in workers:
                    task.cancel()

    def _resends(self, batches: Sequence[Sequence[Event]],
                 retry_batches: Sequence[Sequence[Event]]) -> list[list[Event]]:
        acknowledged = self._log.acknowledged()
        chosen = {(e.account_id, e.event_id) for batch in retry_batches for e in batch}
        chosen &= acknowledged
        chosen |= self._log.acknowledged_around_fault(RESEND_BEFORE_FAULT_S,
                                                      RESEND_AFTER_FAULT_S)
        again = [e for batch in batches for e in batch if (e.account_id, e.event_id) in chosen]
        size = max((len(batch) for batch in batches), default=1)
        return [again[i:i + size] for i in range(0, len(again), size)]

    async def _pace(self, queue: asyncio.Queue[Sequence[Event] | None],
                    batches: Sequence[Sequence[Event]], stop: threading.Event) -> None:
        """Hand out batches at the spec's rate; a backlog (requests stuck retrying) delays the
        next batch instead of bursting later."""
        next_at = time.monotonic()
        for batch in batches:
            if stop.is_set():
                return
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await queue.put(batch)
            next_at = max(next_at + len(batch) / self._spec.rate, time.monotonic())

    async def _post_until_acknowledged(self, client: httpx.AsyncClient,
                                       events: Sequence[Event]) -> None:
        keys = _keys(events)
        self._log.sending(keys)
        body = msgspec.json.encode(list(events))
        deadline = time.monotonic() + self._spec.give_up_after_s
        attempt = 0
        while True:
            retry_after: str | None = None
            try:
                response = await client.post("/v1/events/batch", content=body)
            except httpx.TransportError as exc:  # refused, reset, timed out: outcome unknown
                reason = f"connection ({type(exc).__name__})"
            else:
                if response.status_code == 202:
                    self._log.accepted(keys, self._decoder.decode(response.content),
                                       time.monotonic())
                    return
                if response.status_code not in RETRIED_STATUSES:
                    self._log.not_acknowledged(len(events), gave_up=False)
                    self._say(f"  load: request of {len(events)} events answered "
                              f"{response.status_code}, not retried: {response.text[:200]}")
                    return
                reason = str(response.status_code)
                retry_after = response.headers.get("retry-after")
            delay = retry_delay(retry_after, attempt)
            if time.monotonic() + delay > deadline:
                self._log.not_acknowledged(len(events), gave_up=True)
                self._say(f"  load: gave up on a request of {len(events)} events after "
                          f"{self._spec.give_up_after_s:g}s of retries (last: {reason})")
                return
            self._log.retried(reason)
            attempt += 1
            await asyncio.sleep(delay)

    async def _report(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(_PROGRESS_EVERY_S)
            retries = self._log.retries_text() or "none"
            self._say(f"  load: {self._log.count():,} events acknowledged after "
                      f"{time.monotonic() - started:.0f}s; retried attempts: {retries}")


class LoadThread(threading.Thread):
    """Runs a ``LoadClient`` on an event loop of its own; ``stop`` ends the first sends."""

    def __init__(self, client: LoadClient, batches: Sequence[Sequence[Event]],
                 retry_batches: Sequence[Sequence[Event]]) -> None:
        super().__init__(name="eventray-chaos-load", daemon=True)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._client = client
        self._batches = batches
        self._retry_batches = retry_batches

    def run(self) -> None:
        try:
            asyncio.run(self._client.run(self._batches, self._retry_batches, self.stop))
        except Exception as exc:  # noqa: BLE001 - the driver re-raises it after join()
            self.error = exc
