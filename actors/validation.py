"""Business rules beyond the contract's shapes: pure functions over events, no I/O.

The contract (``actors.contract``) already guarantees types, lengths and patterns. These rules
check sense: a currency that exists, a country that exists, an amount within the configured
maximum, a timestamp neither in the future nor too old, a refund that does not refund itself.

A failed rule is reported as ``"<code>: <detail>"``; ``reason_code`` extracts the stable code
(used as a metrics label and in the dead-letter header), the detail is for humans.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from actors.config import ValidationRules
from actors.contract import AccountUpdated, Event, PaymentCaptured, PaymentRefunded


def _codes(text: str) -> frozenset[str]:
    """The whitespace-separated codes of a block of text."""
    return frozenset(text.split())


# ISO 4217 active codes (list one, 2025), including funds and precious-metal codes. Left out on
# purpose: XTS (reserved for testing) and XXX ("no currency"), which no payment can be in.
ISO_4217_CURRENCIES: Final[frozenset[str]] = _codes(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD
    BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD
    EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD
    IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL
    MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN
    PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN
    SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES
    VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XUA YER ZAR ZMW
    ZWG
    """
)

# ISO 3166-1 alpha-2 officially assigned codes (249). User-assigned codes (AA, QM-QZ, XA-XZ,
# ZZ) and exceptionally reserved ones (EU, UK, ...) are not countries and are refused.
ISO_3166_COUNTRIES: Final[frozenset[str]] = _codes(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """
)

# Stable reason codes (the part before ':'), e.g. for metrics labels and alerting.
AMOUNT_ABOVE_MAX: Final = "amount_above_max"
AMOUNT_ZERO: Final = "amount_zero"
UNKNOWN_CURRENCY: Final = "unknown_currency"
UNKNOWN_COUNTRY: Final = "unknown_country"
INVALID_EMAIL: Final = "invalid_email"
OCCURRED_IN_FUTURE: Final = "occurred_in_future"
OCCURRED_TOO_OLD: Final = "occurred_too_old"
REFUND_OF_ITSELF: Final = "refund_of_itself"
PAYMENT_TO_SELF: Final = "payment_to_self"
REASON_CODES: Final[frozenset[str]] = frozenset({
    AMOUNT_ABOVE_MAX, AMOUNT_ZERO, UNKNOWN_CURRENCY, UNKNOWN_COUNTRY, INVALID_EMAIL,
    OCCURRED_IN_FUTURE, OCCURRED_TOO_OLD, REFUND_OF_ITSELF, PAYMENT_TO_SELF,
})

# Deliberately loose: one '@', a non-empty local part, a dotted domain, no whitespace.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def reason_code(reason: str) -> str:
    """The stable code of a reason (``"unknown_currency: XYZ"`` -> ``"unknown_currency"``)."""
    return reason.split(":", 1)[0].strip()


def check_event(event: Event, rules: ValidationRules, now: datetime) -> str | None:
    """``None`` when the event passes every rule, else the first failure as ``code: detail``.

    ``now`` must be timezone-aware (the contract makes ``occurred_at`` aware too).
    """
    return _check(event, rules, _TimeWindow.around(now, rules))


def validate_batch(
    events: Sequence[Event], rules: ValidationRules, now: datetime
) -> list[str | None]:
    """``check_event`` for each event, in order; one ``now`` for the whole batch."""
    window = _TimeWindow.around(now, rules)  # once per batch: timedelta math is ~2 µs/event
    return [_check(event, rules, window) for event in events]


@dataclass(frozen=True, slots=True)
class _TimeWindow:
    """The accepted ``occurred_at`` range for one ``now``."""

    now: datetime
    earliest: datetime
    latest: datetime

    @classmethod
    def around(cls, now: datetime, rules: ValidationRules) -> _TimeWindow:
        return cls(now=now, earliest=now - timedelta(days=rules.max_past_age_days),
                   latest=now + timedelta(seconds=rules.max_future_skew_s))


def _check(event: Event, rules: ValidationRules, window: _TimeWindow) -> str | None:
    reason = _check_time(event.occurred_at, rules, window)
    if reason is not None:
        return reason
    if isinstance(event, PaymentCaptured):
        return _check_payment(event, rules)
    if isinstance(event, PaymentRefunded):
        return _check_refund(event, rules)
    if isinstance(event, AccountUpdated):
        return _check_account(event)
    raise TypeError(f"not a contract event: {type(event).__name__}")  # pragma: no cover


def _check_time(occurred_at: datetime, rules: ValidationRules,
                window: _TimeWindow) -> str | None:
    if occurred_at > window.latest:
        ahead = (occurred_at - window.now).total_seconds()
        return (f"{OCCURRED_IN_FUTURE}: {occurred_at.isoformat()} is {ahead:.0f}s ahead "
                f"(max {rules.max_future_skew_s:.0f}s)")
    if occurred_at < window.earliest:
        return (f"{OCCURRED_TOO_OLD}: {occurred_at.isoformat()} is older than "
                f"{rules.max_past_age_days} days")
    return None


def _check_payment(event: PaymentCaptured, rules: ValidationRules) -> str | None:
    body = event.body
    if body.merchant_id == event.account_id:
        return f"{PAYMENT_TO_SELF}: merchant_id equals account_id {event.account_id}"
    return _check_money(body.amount_minor, body.currency, rules)


def _check_refund(event: PaymentRefunded, rules: ValidationRules) -> str | None:
    body = event.body
    if body.payment_event_id == event.event_id:
        return f"{REFUND_OF_ITSELF}: payment_event_id {body.payment_event_id}"
    return _check_money(body.amount_minor, body.currency, rules)


def _check_account(event: AccountUpdated) -> str | None:
    body = event.body
    if body.country not in ISO_3166_COUNTRIES:
        return f"{UNKNOWN_COUNTRY}: {body.country}"
    if body.email is not None and _EMAIL.match(body.email) is None:
        return f"{INVALID_EMAIL}: {body.email!r}"
    return None


def _check_money(amount_minor: int, currency: str, rules: ValidationRules) -> str | None:
    if currency not in ISO_4217_CURRENCIES:
        return f"{UNKNOWN_CURRENCY}: {currency}"
    if amount_minor > rules.max_amount_minor:
        return f"{AMOUNT_ABOVE_MAX}: {amount_minor} > {rules.max_amount_minor}"
    if amount_minor == 0:
        return f"{AMOUNT_ZERO}: amount_minor must be positive"
    return None
