"""A generated, realistic workload with a known expected outcome.

Most events are valid; a share passes the contract but breaks a business rule (they must end in
the dead-letter topic); a share is malformed (the gateway must refuse it); some batches of valid
events are sent twice, as a client retrying after a timeout would (they must not make second
rows). Everything is derived from a seed, so a run is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from actors.contract import (
    AccountBody,
    AccountUpdated,
    Event,
    PaymentBody,
    PaymentCaptured,
    PaymentRefunded,
    RefundBody,
)

_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY", "SEK")
_COUNTRIES = ("DE", "FR", "US", "GB", "CH", "SE", "JP")


@dataclass(frozen=True)
class WorkloadSpec:
    events: int = 100_000
    batch_size: int = 1000
    invalid_share: float = 0.03   # pass the contract, fail a business rule -> dead letter
    refused_share: float = 0.005  # break the contract -> 400 at the gateway
    retry_share: float = 0.01     # valid events sent a second time
    accounts: int = 1000
    seed: int = 7
    run_id: str = ""


@dataclass
class Workload:
    run_id: str
    batches: list[list[Event]]            # what is posted, in order (first sends)
    retry_batches: list[list[Event]]      # valid events posted again
    refused_bodies: list[bytes]           # single-event bodies the gateway must refuse
    valid_ids: set[tuple[str, str]] = field(default_factory=set)    # (account, event id)
    invalid_ids: set[tuple[str, str]] = field(default_factory=set)

    @property
    def unique_events(self) -> int:
        return len(self.valid_ids) + len(self.invalid_ids)


def generate(spec: WorkloadSpec, now: datetime | None = None) -> Workload:
    """Build the workload; ``now`` anchors the timestamps (defaults to the current time)."""
    rng = random.Random(spec.seed)  # noqa: S311 - reproducible test data, not secrets
    anchor = now or datetime.now(UTC)
    run_id = spec.run_id or f"run{anchor:%Y%m%d%H%M%S}"
    events: list[Event] = []
    workload = Workload(run_id=run_id, batches=[], retry_batches=[], refused_bodies=[])
    for n in range(spec.events):
        event_id = f"{run_id}-{n:08d}"
        account = f"acct-{rng.randrange(spec.accounts):05d}"
        occurred = anchor - timedelta(seconds=rng.uniform(0, 3600))
        invalid = rng.random() < spec.invalid_share
        event = _make_event(rng, event_id, account, occurred, invalid=invalid, now=anchor)
        events.append(event)
        (workload.invalid_ids if invalid else workload.valid_ids).add((account, event_id))
    workload.batches = [
        events[i : i + spec.batch_size] for i in range(0, len(events), spec.batch_size)
    ]
    valid = [e for e in events if (e.account_id, e.event_id) not in workload.invalid_ids]
    retried = rng.sample(valid, k=min(len(valid), round(spec.events * spec.retry_share)))
    workload.retry_batches = [
        retried[i : i + spec.batch_size] for i in range(0, len(retried), spec.batch_size)
    ]
    refused = round(spec.events * spec.refused_share)
    workload.refused_bodies = [_malformed_body(rng, f"{run_id}-bad-{n}") for n in range(refused)]
    return workload


def _make_event(
    rng: random.Random, event_id: str, account: str, occurred: datetime, *, invalid: bool,
    now: datetime,
) -> Event:
    kind = rng.random()
    currency = rng.choice(_CURRENCIES)
    amount = rng.randrange(1, 500_000)
    breakage = rng.randrange(3) if invalid else -1
    if breakage == 0:
        currency = "XXZ"  # shaped like a code, not an ISO 4217 currency
    elif breakage == 1:
        amount = 10**15  # above the configured maximum
    elif breakage == 2:
        occurred = now + timedelta(days=30)  # in the far future
    if kind < 0.7 or breakage == 1:
        return PaymentCaptured(
            event_id=event_id, account_id=account, occurred_at=occurred,
            body=PaymentBody(amount_minor=amount, currency=currency,
                             merchant_id=f"m-{rng.randrange(200):04d}"),
        )
    if kind < 0.85:
        return PaymentRefunded(
            event_id=event_id, account_id=account, occurred_at=occurred,
            body=RefundBody(payment_event_id=f"pay-{rng.randrange(10**9)}",
                            amount_minor=amount, currency=currency, reason="customer request"),
        )
    if breakage == 0:  # an account has a country, not a currency: break the country instead
        return AccountUpdated(
            event_id=event_id, account_id=account, occurred_at=occurred,
            body=AccountBody(country="XX", display_name="Invalid Country"),
        )
    return AccountUpdated(
        event_id=event_id, account_id=account, occurred_at=occurred,
        body=AccountBody(country=rng.choice(_COUNTRIES), email=f"{account}@example.com"),
    )


def _malformed_body(rng: random.Random, event_id: str) -> bytes:
    """One event that breaks the contract in one of several ways a real client does."""
    base: dict[str, object] = {
        "type": "payment.captured", "event_id": event_id, "account_id": "acct-1",
        "occurred_at": "2026-01-01T00:00:00Z",
        "body": {"amount_minor": 100, "currency": "EUR", "merchant_id": "m-1"},
    }
    kind = rng.randrange(4)
    if kind == 0:
        del base["account_id"]
    elif kind == 1:
        base["body"] = {"amount_minor": "one hundred", "currency": "EUR", "merchant_id": "m-1"}
    elif kind == 2:
        base["occured_at"] = base.pop("occurred_at")  # a typo must not pass silently
    else:
        return b'{"type": "payment.captured", "event_id": '  # truncated JSON
    return msgspec.json.encode(base)
