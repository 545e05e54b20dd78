"""Time to the first committed row (``bench pipeline``'s ``first_row_s``): from the moment the
pipeline is started, as ``python -m cluster.job`` starts it, to the first batch of the filled
topic committed in the warehouse.

A thread of its own polls the offsets table (a batch's rows and its offset row commit in one
transaction) every ``interval_s``; its session logs in before the clock starts. The rows'
``WRITTEN_AT`` would not do: the emulator stamps a transaction's start, not its commit.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, Final

from actors.config import SnowflakeConfig
from cluster.bench.stack import BenchError

_NO_SUCH_OBJECT: Final = 2003  # the offsets table is not created yet


class FirstRowWatch:
    """``with FirstRowWatch(...) as watch: start()`` then ``watch.seconds()``."""

    def __init__(self, config: SnowflakeConfig, topic: str, interval_s: float = 0.05) -> None:
        self._config = config
        self._topic = topic
        self._interval_s = interval_s
        self._found = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._conn: Any = None
        self._thread = threading.Thread(target=self._poll, name="first-row-watch", daemon=True)
        self.started = 0.0
        self.committed_at: float | None = None  # perf_counter time the row was first seen

    def __enter__(self) -> FirstRowWatch:
        import snowflake.connector

        self._conn = snowflake.connector.connect(**self._config.connect_kwargs(),
                                                 paramstyle="qmark")
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._conn.close()

    def seconds(self, timeout_s: float) -> float:
        """Seconds from the start to the first committed row, waiting up to ``timeout_s``."""
        if not self._found.wait(timeout_s):
            raise BenchError(f"no committed row within {timeout_s:g}s of the start")
        if self._error is not None or self.committed_at is None:
            raise BenchError(f"watching for the first row failed: {self._error}")
        return self.committed_at - self.started

    def _poll(self) -> None:
        from snowflake.connector.errors import Error, ProgrammingError

        sql = f"SELECT COUNT(*) FROM {self._config.offsets_table} WHERE TOPIC = ?"
        try:
            while not self._stop.is_set():
                cursor = self._conn.cursor()
                try:
                    cursor.execute(sql, (self._topic,))
                    (count,) = cursor.fetchone()
                except ProgrammingError as exc:
                    if exc.errno != _NO_SUCH_OBJECT:
                        raise
                    count = 0
                finally:
                    cursor.close()
                if count:
                    self.committed_at = time.perf_counter()
                    break
                self._stop.wait(self._interval_s)
        except Error as exc:  # handed to seconds(), which raises it
            self._error = exc
        self._found.set()
