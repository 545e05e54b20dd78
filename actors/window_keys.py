"""The retry window's keys from the warehouse, read by a restarting consumer itself.

At its first batch a consumer rebuilds its retry window from the partition's rows (up to
``dedup_max_keys`` of them, two million by default) and its dead letters
(``actors.window_rebuild``). The rows are read here, on a short-lived Snowflake session of the
consumer's own, built from the same ``SnowflakeConfig`` as the sinks': NOT through its sink
actor, whose one thread writes the batches of every partition it serves, which would wait
behind the whole read.

The rows come in pages of ``page_rows`` by offset (``actors.warehouse.WindowSql``), each page a
range that starts where the last one ended. So memory holds one page, whatever the window's
size; a page the connection lost is read again from its first offset on a new session; and the
stream is in the window's order, ready for ``stream_window`` to merge with the dead letters.
Which rows: the ``limit`` newest by offset accepted since ``since_ms``, as
``SnowflakeWriter.recent_keys`` returns them (a row of a replayed dead letter also gives its
replay key, before its event key, as ``plan_batch`` adds them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from actors.config import SnowflakeConfig
from actors.exceptions import WarehouseReadError
from actors.retry_window import DecidedKey, replay_key
from actors.warehouse import WindowSql, window_sql

log = logging.getLogger(__name__)

RowsRead = Callable[[int], None]
"""Called with the number of rows read so far, after each page (a consumer's status)."""

_NETWORK_TIMEOUT_S: Final = 30
_MAX_BACKOFF_S: Final = 10.0
_PROGRESS_LOG_S: Final = 10.0


class TableKeys:
    """The window keys of one partition's rows, read in pages on a session of its own. Use it
    as a context manager (the session closes at exit); iterate ``keys()`` once."""

    def __init__(self, config: SnowflakeConfig, topic: str, partition: int, *,
                 page_rows: int, attempts: int = 5, backoff_s: float = 0.5) -> None:
        self._config = config
        self._sql: WindowSql = window_sql(config)
        self._topic = topic
        self._partition = partition
        self._page_rows = page_rows
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._conn: Any = None
        self.rows_read = 0

    def __enter__(self) -> TableKeys:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def keys(self, since_ms: int, limit: int,
             progress: RowsRead | None = None) -> Iterator[DecidedKey]:
        """The keys of the ``limit`` newest rows (by offset) accepted at/after ``since_ms``, in
        offset order, a page at a time."""
        key = (self._topic, self._partition)
        first = self._query("the window's first offset", self._sql.first_offset,
                            (*key, since_ms, limit))
        if not first or first[0][0] is None:
            return
        next_offset = int(first[0][0])
        started = logged = time.monotonic()
        while True:
            page = self._query("a page of window keys", self._sql.page,
                               (*key, since_ms, next_offset, self._page_rows))
            for replay_of, account, event, row_offset, row_accepted_ms in page:
                offset, accepted_ms = int(row_offset), int(row_accepted_ms)
                if replay_of is not None:
                    yield DecidedKey(offset, accepted_ms, replay_key(str(replay_of)))
                yield DecidedKey(offset, accepted_ms, (str(account), str(event)))
            self.rows_read += len(page)
            if progress is not None:
                progress(self.rows_read)
            if len(page) < self._page_rows:
                return
            next_offset = int(page[-1][3]) + 1
            if time.monotonic() - logged >= _PROGRESS_LOG_S:
                logged = time.monotonic()
                log.info("reading retry window keys topic=%s partition=%d rows=%d offset=%d "
                         "elapsed_s=%.0f", self._topic, self._partition, self.rows_read,
                         next_offset, logged - started)

    def close(self) -> None:
        from snowflake.connector import errors as sf_errors

        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sf_errors.Error as exc:  # dropped either way; the server ends the session
                log.warning("closing the window keys session failed error=%r", exc)

    def _connection(self) -> Any:
        import snowflake.connector

        if self._conn is None:
            self._conn = snowflake.connector.connect(
                **self._config.connect_kwargs(), paramstyle="qmark", autocommit=True,
                network_timeout=_NETWORK_TIMEOUT_S)
        return self._conn

    def _query(self, what: str, sql: str,
               params: tuple[object, ...]) -> Sequence[tuple[Any, ...]]:
        """``sql``'s rows; on a transient error the session is dropped and the same statement
        run again on a new one (a page starts at an offset: nothing is read twice)."""
        from snowflake.connector import errors as sf_errors

        from actors.sink import is_transient

        backoff = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                cursor = self._connection().cursor()
                try:
                    cursor.execute(sql, params)
                    rows: list[tuple[Any, ...]] = cursor.fetchall()
                    return rows
                finally:
                    cursor.close()
            except sf_errors.Error as exc:
                self.close()
                if not is_transient(exc) or attempt == self._attempts:
                    raise WarehouseReadError(f"reading {what} of {self._topic}/{self._partition} "
                                    f"failed (attempt {attempt}): {exc}") from exc
                log.warning("transient Snowflake error reading %s, retrying topic=%s "
                            "partition=%d attempt=%d backoff_s=%.2f error=%r", what,
                            self._topic, self._partition, attempt, backoff, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        raise AssertionError("unreachable")  # pragma: no cover
