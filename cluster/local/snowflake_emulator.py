"""The Snowflake emulator (fakesnow's HTTP server) as a local service, persisted on disk.

fakesnow 0.12.1's ``python -m fakesnow -s -p PORT -d DIR`` ignores ``-d`` in server mode (its
CLI passes only host and port to the server, whose shared instance is in memory). So the
service runs this module (``python -m cluster.local.snowflake_emulator --port P --db-path
DIR``), which serves fakesnow's own Starlette app with the shared instance bound to
``DIR``: every database is the DuckDB file ``DIR/<DATABASE>.db`` and comes back after a restart.

The server also ends transactions as Snowflake does (``cluster.local.emulator_sessions``): a
closed session's open transaction is rolled back, and one idle for ``idle_transaction_abort_s``
(15 s) is aborted, so a writer killed mid-transaction does not block its partition for good; a
statement that conflicts with another transaction's write is refused at once with Snowflake's
lock error (000625) instead of an HTTP 500.

It also costs less per row than fakesnow alone, with the same results
(``cluster.local.emulator_speedups``: FLATTEN of a bound JSON array in one pass, no debug
string of every request's bindings, a faster JSON decoder for request bodies); ``--stock``
(``LocalSnowflake(speedups=False)``) serves fakesnow as it is, to compare.

Clients reach it only through the real snowflake-connector-python (host 127.0.0.1, the port,
protocol http). Connecting with ``database=``/``schema=`` creates them if missing (fakesnow's
default); ``ensure_database`` also creates them with plain ``CREATE ... IF NOT EXISTS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from actors.config import SnowflakeConfig
from cluster.local.emulator_sessions import IDLE_TRANSACTION_ABORT_S
from cluster.local.processes import (
    LocalService,
    ServiceProcess,
    ServiceStartError,
    free_port,
    port_accepts,
    require_free_ports,
)

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class LocalSnowflake(LocalService):
    """A fakesnow server whose databases live in ``data_dir``."""

    LOG_NAME = "snowflake.log"

    def __init__(self, data_dir: Path, port: int = 0, *, log_dir: Path | None = None,
                 idle_transaction_abort_s: float = IDLE_TRANSACTION_ABORT_S,
                 speedups: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.log_dir = (log_dir or self.data_dir).resolve()
        self._port = port
        self._idle_abort_s = idle_transaction_abort_s
        self._speedups = speedups
        self._process: ServiceProcess | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"http://{HOST}:{self._port}"

    def snowflake_config(self, database: str = "EVENTRAY",
                         schema: str = "PUBLIC") -> SnowflakeConfig:
        """A ``SnowflakeConfig`` pointing at this emulator."""
        return emulator_config(HOST, self._port, database=database, schema=schema)

    def start(self, timeout: float = 60.0) -> None:
        """Launch the server; return once a real connector login and ``SELECT 1`` work."""
        if self.is_running():
            return
        if self._port == 0:
            self._port = free_port(HOST)
        require_free_ports("snowflake emulator", {"port": self._port}, HOST)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cluster.local.snowflake_emulator", "--host", HOST,
               "--port", str(self._port), "--db-path", str(self.data_dir),
               "--idle-transaction-abort-s", str(self._idle_abort_s)]
        if not self._speedups:
            cmd.append("--stock")
        # The child imports this package even when it is not installed (a source checkout).
        package_root = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                     if p)
        self._process = ServiceProcess.spawn("snowflake emulator", cmd, log_path=self.log_path,
                                             env={"PYTHONPATH": pythonpath}, cwd=self.data_dir)
        try:
            self._process.wait_ready(self._query_ok, timeout=timeout,
                                     what=f"answering queries on {self.address}")
        except ServiceStartError as exc:
            raise ServiceStartError(f"snowflake emulator on port {self._port}: {exc}") from None
        log.info("snowflake emulator ready address=%s pid=%s data=%s", self.address, self.pid,
                 self.data_dir)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def ensure_database(self, database: str, schema: str = "PUBLIC") -> None:
        ensure_database(self.snowflake_config(database=database, schema=schema))

    def _query_ok(self) -> bool:
        if not port_accepts(self._port, HOST):
            return False
        return ping(self.snowflake_config())


def emulator_config(host: str, port: int, *, database: str = "EVENTRAY",
                    schema: str = "PUBLIC") -> SnowflakeConfig:
    return SnowflakeConfig(host=host, port=port, protocol="http", database=database,
                           schema=schema)


def ping(config: SnowflakeConfig) -> bool:
    """One login and ``SELECT 1`` through the real connector."""
    import snowflake.connector

    kwargs = config.connect_kwargs()
    kwargs.pop("database", None)  # fakesnow would create it on login
    kwargs.pop("schema", None)
    kwargs["login_timeout"] = 5
    kwargs["network_timeout"] = 5
    with snowflake.connector.connect(**kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        row = cur.fetchone()
    return row is not None and row[0] == 1


def ensure_database(config: SnowflakeConfig) -> None:
    """``CREATE DATABASE/SCHEMA IF NOT EXISTS`` for the config's database and schema."""
    import snowflake.connector

    kwargs = config.connect_kwargs()
    kwargs.pop("database", None)
    kwargs.pop("schema", None)
    with snowflake.connector.connect(**kwargs) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {config.database}")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {config.database}.{config.schema}")


def serve(host: str, port: int, db_path: Path,
          idle_transaction_abort_s: float = IDLE_TRANSACTION_ABORT_S, *,
          speedups: bool = True) -> None:
    """Run fakesnow's server in this process with its shared instance persisted in db_path,
    ending transactions as Snowflake does (``cluster.local.emulator_sessions``), with
    ``cluster.local.emulator_speedups`` installed unless ``speedups`` is False."""
    import importlib
    import threading

    import uvicorn
    from fakesnow.instance import FakeSnow

    from cluster.local.emulator_sessions import (
        ClosingSessions,
        SessionActivity,
        abort_idle_transactions,
        answer_conflicts_as_lock_errors,
        track_sessions,
    )

    if speedups:  # before fakesnow attaches any database: its macros come with the attach
        from cluster.local.emulator_speedups import install

        install()
    # The package's ``server`` attribute is also a function; import the module by name.
    server_module: Any = importlib.import_module("fakesnow.server")
    db_path.mkdir(parents=True, exist_ok=True)
    # login_request and the session handlers read these module globals at call time.
    server_module.shared_fs = FakeSnow(db_path=db_path)
    server_module.sessions = sessions = ClosingSessions()
    answer_conflicts_as_lock_errors()
    activity = SessionActivity()
    stop = threading.Event()
    threading.Thread(target=abort_idle_transactions, name="abort-idle-transactions",
                     args=(sessions, activity, idle_transaction_abort_s, stop),
                     daemon=True).start()
    try:
        # uvicorn.run handles SIGTERM/SIGINT with a graceful shutdown.
        uvicorn.run(track_sessions(server_module.app, activity), host=host, port=port,
                    log_level="info", access_log=False)
    finally:
        stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fakesnow server persisted on disk")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db-path", type=Path, required=True)
    parser.add_argument("--idle-transaction-abort-s", type=float,
                        default=IDLE_TRANSACTION_ABORT_S)
    parser.add_argument("--stock", action="store_true",
                        help="serve fakesnow without cluster.local.emulator_speedups")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.db_path, args.idle_transaction_abort_s,
          speedups=not args.stock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
