"""Measuring time to recover: a thread that polls from the fault on (definition in
``cluster.chaos.report.RECOVERY_DEFINITION``).

It runs beside the fault's injection, since a scenario may recover before its ``inject``
returns (a frozen node's consumer fails over while the old one is still frozen). Progress
comes from Kafka and the warehouse (``ProgressReader``), the scenario's check is polled only once
progress says the pipeline flows, so a slow check never runs against a service still down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from actors.config import PipelineConfig
from cluster.chaos.load import AckLog
from cluster.chaos.progress import ProgressReader, ProgressUnavailableError, caught_up

log = logging.getLogger(__name__)

_POLL_S: Final = 0.5


class RecoveryMonitor(threading.Thread):
    """``recovery_s`` is set once recovered; stays None past ``timeout_s`` or ``stop()``."""

    def __init__(self, config: PipelineConfig, acks: AckLog, healthy: Callable[[], bool],
                 fault_at: float, timeout_s: float) -> None:
        super().__init__(name="eventray-chaos-recovery", daemon=True)
        self.recovery_s: float | None = None
        self.error: BaseException | None = None
        self._config = config
        self._acks = acks
        self._healthy = healthy
        self._fault_at = fault_at
        self._deadline = fault_at + timeout_s
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        reader = ProgressReader(self._config)
        try:
            while not self._stopping.is_set() and time.monotonic() < self._deadline:
                polled_at = time.monotonic()
                if self._recovered(reader):
                    self.recovery_s = polled_at - self._fault_at
                    return
                self._stopping.wait(max(0.0, _POLL_S - (time.monotonic() - polled_at)))
        except Exception as exc:  # noqa: BLE001 - the driver re-raises it after join()
            self.error = exc
        finally:
            reader.close()

    def _recovered(self, reader: ProgressReader) -> bool:
        try:
            progress = reader.read()
        except ProgressUnavailableError as exc:
            log.debug("progress unavailable: %s", exc)
            return False
        return caught_up(self._acks.first_after(), progress) and self._healthy()
