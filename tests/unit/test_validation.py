"""Business rules: each rule, each event type, the reason codes; plain data, in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from actors.config import ValidationRules
from actors.contract import (
    AccountBody,
    AccountUpdated,
    Event,
    PaymentBody,
    PaymentCaptured,
    PaymentRefunded,
    RefundBody,
)
from actors.validation import (
    ISO_3166_COUNTRIES,
    ISO_4217_CURRENCIES,
    REASON_CODES,
    check_event,
    reason_code,
    validate_batch,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RULES = ValidationRules(max_amount_minor=10_000_000_000, max_future_skew_s=300.0,
                        max_past_age_days=365)


def payment(amount: int = 1250, currency: str = "EUR", *, occurred: datetime = NOW,
            merchant: str = "m-1", account: str = "acct-1") -> PaymentCaptured:
    return PaymentCaptured(event_id="pay-1", account_id=account, occurred_at=occurred,
                           body=PaymentBody(amount_minor=amount, currency=currency,
                                            merchant_id=merchant))


def refund(amount: int = 500, currency: str = "USD", *, of: str = "pay-1",
           event_id: str = "ref-1") -> PaymentRefunded:
    return PaymentRefunded(event_id=event_id, account_id="acct-1", occurred_at=NOW,
                           body=RefundBody(payment_event_id=of, amount_minor=amount,
                                           currency=currency))


def account(country: str = "DE", email: str | None = "a@example.com") -> AccountUpdated:
    return AccountUpdated(event_id="acc-1", account_id="acct-1", occurred_at=NOW,
                          body=AccountBody(country=country, email=email))


def code(event: Event) -> str | None:
    reason = check_event(event, RULES, NOW)
    return None if reason is None else reason_code(reason)


def test_valid_events_of_every_type_pass() -> None:
    assert check_event(payment(), RULES, NOW) is None
    assert check_event(refund(), RULES, NOW) is None
    assert check_event(account(), RULES, NOW) is None
    assert check_event(account(email=None), RULES, NOW) is None


def test_amount_at_the_maximum_passes_and_above_fails_with_both_values() -> None:
    assert check_event(payment(amount=RULES.max_amount_minor), RULES, NOW) is None
    reason = check_event(payment(amount=RULES.max_amount_minor + 1), RULES, NOW)
    assert reason == "amount_above_max: 10000000001 > 10000000000"
    assert code(refund(amount=RULES.max_amount_minor + 1)) == "amount_above_max"


def test_zero_amount_is_refused_for_payments_and_refunds() -> None:
    assert code(payment(amount=0)) == "amount_zero"
    assert code(refund(amount=0)) == "amount_zero"


@pytest.mark.parametrize("currency", ["XYZ", "XXZ", "XTS", "XXX", "HRK"])
def test_unknown_currency(currency: str) -> None:
    assert check_event(payment(currency=currency), RULES, NOW) == f"unknown_currency: {currency}"
    assert code(refund(currency=currency)) == "unknown_currency"


@pytest.mark.parametrize("currency", ["EUR", "USD", "JPY", "CHF", "XAU", "ZWG", "SLE"])
def test_active_currencies_pass(currency: str) -> None:
    assert check_event(payment(currency=currency), RULES, NOW) is None


def test_occurred_in_the_future_beyond_the_skew() -> None:
    skew = timedelta(seconds=RULES.max_future_skew_s)
    assert check_event(payment(occurred=NOW + skew), RULES, NOW) is None
    reason = check_event(payment(occurred=NOW + skew + timedelta(seconds=1)), RULES, NOW)
    assert reason is not None
    assert reason_code(reason) == "occurred_in_future"
    assert "301s ahead" in reason


def test_occurred_too_old() -> None:
    age = timedelta(days=RULES.max_past_age_days)
    assert check_event(payment(occurred=NOW - age), RULES, NOW) is None
    assert code(payment(occurred=NOW - age - timedelta(seconds=1))) == "occurred_too_old"


def test_time_rules_compare_instants_not_wall_clocks() -> None:
    plus_one = timezone(timedelta(hours=1))
    # 13:04+01:00 is 12:04 UTC, 240 s ahead: within the skew only when compared as instants.
    assert check_event(payment(occurred=datetime(2026, 3, 1, 13, 4, tzinfo=plus_one)),
                       RULES, NOW) is None
    assert code(payment(occurred=datetime(2026, 3, 1, 13, 6, tzinfo=plus_one))) == (
        "occurred_in_future")


def test_time_rules_apply_to_every_event_type() -> None:
    future = NOW + timedelta(days=1)
    refunded = PaymentRefunded(event_id="r", account_id="a", occurred_at=future,
                               body=RefundBody(payment_event_id="p", amount_minor=1,
                                               currency="EUR"))
    updated = AccountUpdated(event_id="u", account_id="a", occurred_at=future,
                             body=AccountBody(country="FR"))
    assert code(refunded) == "occurred_in_future"
    assert code(updated) == "occurred_in_future"


def test_time_is_checked_before_the_body() -> None:
    assert code(payment(currency="XYZ", occurred=NOW + timedelta(days=30))) == (
        "occurred_in_future")


def test_refund_of_itself() -> None:
    assert check_event(refund(of="ref-1", event_id="ref-1"), RULES, NOW) == (
        "refund_of_itself: payment_event_id ref-1")


def test_payment_to_self() -> None:
    assert code(payment(merchant="acct-1", account="acct-1")) == "payment_to_self"


@pytest.mark.parametrize("country", ["XX", "UK", "EU", "ZZ", "AA", "QZ"])
def test_unknown_country(country: str) -> None:
    assert check_event(account(country=country), RULES, NOW) == f"unknown_country: {country}"


@pytest.mark.parametrize("email", ["no-at-sign", "a@b", "a b@example.com", "@example.com"])
def test_invalid_email(email: str) -> None:
    assert code(account(email=email)) == "invalid_email"


def test_code_sets_have_the_expected_members() -> None:
    assert len(ISO_3166_COUNTRIES) == 249
    assert {"DE", "US", "GB", "JP", "SS", "XK"} - ISO_3166_COUNTRIES == {"XK"}
    assert all(len(c) == 3 and c.isupper() for c in ISO_4217_CURRENCIES)
    assert {"EUR", "USD", "GBP", "JPY", "CHF", "SEK"} <= ISO_4217_CURRENCIES


def test_reason_code_is_the_part_before_the_colon() -> None:
    assert reason_code("amount_above_max: 12000000001 > 10000000000") == "amount_above_max"
    assert reason_code("unknown_currency: XYZ") == "unknown_currency"
    assert reason_code("refund_of_itself") == "refund_of_itself"


def test_every_reason_produced_has_a_registered_code() -> None:
    bad: list[Event] = [
        payment(amount=RULES.max_amount_minor + 1), payment(amount=0), payment(currency="XYZ"),
        payment(occurred=NOW + timedelta(days=1)), payment(occurred=NOW - timedelta(days=999)),
        payment(merchant="acct-1"), refund(of="ref-1"), account(country="XX"),
        account(email="nope"),
    ]
    codes = {code(e) for e in bad}
    assert codes == REASON_CODES


def test_validate_batch_keeps_order_and_length() -> None:
    events: list[Event] = [payment(), payment(currency="XYZ"), account(), refund(of="ref-1")]
    reasons = validate_batch(events, RULES, NOW)
    assert [None if r is None else reason_code(r) for r in reasons] == [
        None, "unknown_currency", None, "refund_of_itself"]
    assert validate_batch([], RULES, NOW) == []
