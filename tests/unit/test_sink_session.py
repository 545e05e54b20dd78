"""The sink's own Snowflake session: its parameters and which errors it retries (pure parts).

Why: docs/guarantees.md, "A sink killed mid-transaction". The emulator accepts these session
parameters and ignores them, so only their construction is tested here."""

from __future__ import annotations

from snowflake.connector import errors as sf_errors

from actors.config import SinkConfig, SnowflakeConfig
from actors.secret import Secret
from actors.sink import is_transient, session_parameters, sink_connect_kwargs

CONFIG = SnowflakeConfig(password=Secret("pw"))


def test_the_sinks_session_bounds_its_lock_waits_by_default() -> None:
    assert session_parameters(SinkConfig()) == {"ABORT_DETACHED_QUERY": True,
                                               "LOCK_TIMEOUT": 120}
    assert session_parameters(SinkConfig(lock_timeout_s=0, statement_timeout_s=900)) == {
        "ABORT_DETACHED_QUERY": True, "STATEMENT_TIMEOUT_IN_SECONDS": 900}
    kwargs = sink_connect_kwargs(CONFIG, SinkConfig(lock_timeout_s=30))
    assert kwargs["session_parameters"] == {"QUERY_TAG": "eventray", "ABORT_DETACHED_QUERY": True,
                                            "LOCK_TIMEOUT": 30}
    assert CONFIG.connect_kwargs()["session_parameters"] == {"QUERY_TAG": "eventray"}


def test_a_statement_snowflake_cancelled_is_retried_a_missing_table_is_not() -> None:
    """A lock wait past LOCK_TIMEOUT and a statement timeout come back in SQLSTATE class 57014
    (000625 is the waiter limit; the lock timeout's own code is not in the reference)."""
    cancelled = sf_errors.ProgrammingError("lock wait timeout", errno=999_999, sqlstate="57014")
    timed_out = sf_errors.ProgrammingError("statement timeout", errno=630, sqlstate="57014")
    waiters = sf_errors.ProgrammingError("too many waiters", errno=625, sqlstate="57014")
    missing = sf_errors.ProgrammingError("does not exist", errno=2003, sqlstate="42S02")
    assert is_transient(cancelled) and is_transient(timed_out) and is_transient(waiters)
    assert not is_transient(missing)
