"""``eventray status``: the pipeline's per-partition table, as the supervisor reports it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from cluster.settings import Settings
from cluster.supervisor import PipelineStatus, get_status

_COLUMNS = ("PARTITION", "OWNER", "STATE", "NODE", "COMMITTED", "END", "LAG", "ROWS/S",
            "LAST ERROR")
_ERROR_WIDTH = 60


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def format_status(status: PipelineStatus) -> str:
    """A fixed-width table, one line per partition, then sinks and totals."""
    rows = [
        (str(p.partition), p.owner, p.state, (p.node_id or "-")[:12], _cell(p.committed_offset),
         _cell(p.end_offset), _cell(p.lag), f"{p.rows_per_s:.0f}",
         (p.last_error or "").replace("\n", " ")[:_ERROR_WIDTH])
        for p in status.partitions
    ]
    widths = [max(len(col), *(len(r[i]) for r in rows)) if rows else len(col)
              for i, col in enumerate(_COLUMNS)]
    lines = [f"pipeline topic={status.topic} namespace={status.namespace}"]
    lines.append("  ".join(col.ljust(w) for col, w in zip(_COLUMNS, widths, strict=True)))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    sinks = ", ".join(f"{s.name}={s.state}@{(s.node_id or '-')[:12]}" for s in status.sinks)
    t = status.totals
    lines.append(f"sinks: {sinks or '-'}")
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
