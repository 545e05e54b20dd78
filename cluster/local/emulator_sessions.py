"""What Snowflake does with a session's open transaction, added to fakesnow's server.

Snowflake rolls back the open transaction of a session that is closed, and aborts a
transaction left behind by a client that went away once it blocks another one and has been
idle for 5 minutes (https://docs.snowflake.com/en/sql-reference/transactions, "Aborting
transactions"). fakesnow 0.12.1 does neither: its session delete drops the session from a dict
and leaves the DuckDB connection, with its transaction, open; nothing ever ends a transaction
whose client was killed. Every later UPDATE of a row that transaction updated then conflicts,
forever: a sink killed between its owner-row UPDATE and its COMMIT (``actors.sink``) would
stop its partition until the emulator restarts.

fakesnow also passes DuckDB's write conflict (an UPDATE of a row another open transaction
updated) up as an unhandled error: HTTP 500, which the connector retries for its whole network
timeout although DuckDB refuses every later statement of the transaction. Snowflake would make
the statement wait for the lock, and refuses it with error 000625 when too many wait.
``answer_conflicts_as_lock_errors`` answers 000625 at once; the sink retries the transaction.

So the emulator (``cluster.local.snowflake_emulator``) serves fakesnow's app with

* ``ClosingSessions``: deleting a session closes its DuckDB connection (rolling back);
* ``track_sessions`` and ``abort_idle_transactions``: a session with no request in flight for
  ``idle_s`` seconds has its open transaction rolled back, once per idle spell (Snowflake's
  rule, with a shorter idle time for a laptop and without checking that it blocks anyone).
  The session stays, as after ``SYSTEM$ABORT_TRANSACTION``: its next statements run on their
  own, which is why the sink's inserts are guarded by the transaction's write token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

log = logging.getLogger(__name__)

# Snowflake waits 5 minutes; a live writer's statements follow each other within milliseconds
# and a running statement counts as activity, so 15 s only ever catches clients that are gone
# or stopped (and should it catch a slow one, the sink retries the aborted transaction).
IDLE_TRANSACTION_ABORT_S: Final = 15.0
_REAP_EVERY_S: Final = 1.0
_QUERY_PATH: Final = "/queries/v1/query-request"
# fakesnow's own parsing of 'Snowflake Token="<token>"'.
_TOKEN_PREFIX: Final = len('Snowflake Token="')

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClosingSessions(dict[str, Any]):
    """fakesnow's token -> connection dict; deleting a session closes its connection, which
    rolls back its open transaction (as Snowflake does when a session is closed)."""

    def __delitem__(self, token: str) -> None:
        import duckdb

        conn = self[token]
        super().__delitem__(token)
        try:
            conn.close()
        except duckdb.Error as exc:  # the session is gone either way; say why it was not clean
            log.warning("closing a session's connection failed: %r", exc)


class SessionActivity:
    """Requests in flight and the end of the last one, per session token."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._reaped: set[str] = set()  # idle spells already handled

    def started(self, token: str) -> None:
        with self._lock:  # waits while the reaper handles this session
            self._busy[token] = self._busy.get(token, 0) + 1
            self._reaped.discard(token)

    def finished(self, token: str) -> None:
        with self._lock:
            left = self._busy.get(token, 1) - 1
            if left:
                self._busy[token] = left
            else:
                self._busy.pop(token, None)
            self._last[token] = time.monotonic()

    def reap(self, idle_s: float, abort: Callable[[str], bool]) -> None:
        """Call ``abort(token)`` once for each session idle for ``idle_s``; no request of that
        session starts meanwhile. ``abort`` returns False for a session that is gone."""
        now = time.monotonic()
        with self._lock:
            for token, last in list(self._last.items()):
                if token in self._busy or token in self._reaped or now - last < idle_s:
                    continue
                if abort(token):
                    self._reaped.add(token)
                else:
                    del self._last[token]
                    self._reaped.discard(token)


def track_sessions(app: AsgiApp, activity: SessionActivity) -> AsgiApp:
    """``app`` with each query request counted as activity of its session."""

    async def tracked(scope: Scope, receive: Receive, send: Send) -> None:
        token = _token(scope)
        if token is None:
            await app(scope, receive, send)
            return
        activity.started(token)
        try:
            await app(scope, receive, send)
        finally:
            activity.finished(token)

    return tracked


def abort_idle_transactions(sessions: MutableMapping[str, Any], activity: SessionActivity,
                            idle_s: float, stop: threading.Event) -> None:
    """Until ``stop``: roll back the open transaction of every session idle for ``idle_s``."""

    def abort(token: str) -> bool:
        conn = sessions.get(token)
        if conn is None:
            return False
        import duckdb

        try:
            conn._duck_conn.rollback()  # fakesnow keeps its DuckDB connection there
        except duckdb.TransactionException:
            return True  # no transaction open: nothing to abort
        conn._in_transaction = False  # fakesnow's implicit-transaction flag
        log.warning("aborted the open transaction of a session idle for %.0fs (Snowflake "
                    "aborts an idle transaction that blocks others)", idle_s)
        return True

    while not stop.wait(_REAP_EVERY_S):
        try:
            activity.reap(idle_s, abort)
        except Exception:  # the emulator must keep serving; the next round tries again
            log.exception("aborting idle transactions failed")


def answer_conflicts_as_lock_errors() -> None:
    """Make fakesnow's statements raise Snowflake's 000625 for a DuckDB write conflict."""
    import duckdb
    from fakesnow.cursor import FakeSnowflakeCursor
    from snowflake.connector.errors import ProgrammingError

    execute = FakeSnowflakeCursor._execute

    def execute_or_refuse(self: Any, transformed: Any, params: Any = None) -> None:
        try:
            execute(self, transformed, params)
        except duckdb.TransactionException as exc:
            if "onflict" not in str(exc):
                raise
            raise ProgrammingError(
                msg=f"Statement refused: another transaction holds the lock on a row it "
                    f"changes (emulator: DuckDB {exc})", errno=625, sqlstate="57014") from exc

    FakeSnowflakeCursor._execute = execute_or_refuse  # type: ignore[method-assign]


def _token(scope: Scope) -> str | None:
    if scope.get("type") != "http" or scope.get("path") != _QUERY_PATH:
        return None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text: str = value.decode("latin-1")
            return text[_TOKEN_PREFIX:-1]
    return None
