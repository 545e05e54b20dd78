"""``eventray status``: the pipeline's per-partition table, as the supervisor reports it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from cluster.settings import Settings
from cluster.supervisor import AutoscaleStatus, PipelineStatus, SinkStatus, get_status

_COLUMNS = ("PARTITION", "OWNER", "STATE", "NODE", "COMMITTED", "END", "LAG", "ROWS/S",
            "LAST ERROR")
_SINK_COLUMNS = ("SINK", "STATE", "NODE", "BUSY S", "PARTITIONS")
_ERROR_WIDTH = 60


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _table(columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(col), *(len(r[i]) for r in rows)) if rows else len(col)
              for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    return lines


def format_sinks(status: PipelineStatus) -> list[str]:
    """The pool line, one line per sink with the partitions writing through it, and the
    scaling policy's last decision with its reason."""
    def row(s: SinkStatus) -> tuple[str, ...]:
        busy = "-" if s.busy_s is None else f"{s.busy_s:.1f}"
        return (s.name, s.state, (s.node_id or "-")[:12], busy,
                ",".join(map(str, s.partitions)) or "-")

    lines = [f"sink pool: size={status.pool_size} {_autoscale_text(status.autoscale)}"]
    lines += ["  " + line for line in _table(_SINK_COLUMNS, [row(s) for s in status.sinks])]
    decision = status.autoscale.decision if status.autoscale else None
    if decision is not None and status.autoscale is not None:
        at = status.autoscale.decided_at
        when = ("" if at is None else
                f" at {datetime.fromtimestamp(at, UTC).isoformat(timespec='seconds')}")
        lines.append(f"autoscale: last decision{when}: {decision.action} "
                     f"{decision.inputs.pool_size}->{decision.size} ({decision.rule}): "
                     f"{decision.reason}")
    return lines


def _autoscale_text(autoscale: AutoscaleStatus | None) -> str:
    if autoscale is None or not autoscale.enabled:
        return "(autoscale off)"
    return "(autoscale on)"


def format_status(status: PipelineStatus) -> str:
    """A fixed-width table, one line per partition, then the sinks (the pool's size, each
    sink's partitions, the scaling policy's last decision) and totals."""
    rows = [
        (str(p.partition), p.owner, p.state, (p.node_id or "-")[:12], _cell(p.committed_offset),
         _cell(p.end_offset), _cell(p.lag), f"{p.rows_per_s:.0f}",
         (p.last_error or "").replace("\n", " ")[:_ERROR_WIDTH])
        for p in status.partitions
    ]
    lines = [f"pipeline topic={status.topic} namespace={status.namespace}"]
    lines += _table(_COLUMNS, rows)
    lines += format_sinks(status)
    t = status.totals
    lines.append(f"totals: partitions={t.partitions} running={t.running} lag={t.lag} "
                 f"rows/s={t.rows_per_s:.0f} rows_written={t.rows_written} "
                 f"dead_lettered={t.dead_lettered} duplicates={t.duplicates}")
    if status.reconciled_at is not None:
        at = datetime.fromtimestamp(status.reconciled_at, UTC).isoformat(timespec="seconds")
        lines.append(f"last reconciliation: {at}")
    if status.last_error:
        lines.append(f"supervisor error: {status.last_error}")
    return "\n".join(lines)


def report(settings: Settings) -> str:
    """Connect to Ray (unless connected) and format the running pipeline's status."""
    import ray

    connected_here = not ray.is_initialized()
    if connected_here:
        settings.connect_ray(logging_level=logging.WARNING, log_to_driver=False)
    try:
        status = get_status(settings.pipeline_config())
    finally:
        if connected_here:
            ray.shutdown()
    if status is None:
        return f"no pipeline is running in namespace {settings.ray.namespace}"
    return format_status(status)
