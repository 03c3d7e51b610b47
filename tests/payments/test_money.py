"""payments_svc.money: decimal strings to integer minor units by ISO 4217, never via a float."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments_svc.errors import InvalidAmount, InvalidCurrency
from payments_svc.money import MAX_INTEGER_DIGITS, MINOR_UNITS, Money, format_minor, minor_units, parse_amount

CURRENCIES = sorted(MINOR_UNITS)

VALID: list[tuple[str, str, str, int]] = [
    ("usd-two-places", "100.00", "USD", 10000),
    ("usd-whole", "100", "USD", 10000),
    ("usd-one-place", "100.5", "USD", 10050),
    ("usd-one-cent", "0.01", "USD", 1),
    ("jpy-whole", "500", "JPY", 500),
    ("bhd-three-places", "1.250", "BHD", 1250),
    ("usd-15-integer-digits", "9" * MAX_INTEGER_DIGITS, "USD", int("9" * MAX_INTEGER_DIGITS) * 100),
    ("bhd-largest", "9" * MAX_INTEGER_DIGITS + ".999", "BHD", int("9" * (MAX_INTEGER_DIGITS + 3))),
]


@pytest.mark.parametrize(("amount", "currency", "minor"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_amounts(amount: str, currency: str, minor: int) -> None:
    value = parse_amount(amount, currency)
    assert type(value) is int
    assert value == minor
    assert Money.parse(amount, currency) == Money(minor, currency)


INVALID: list[tuple[str, str, str]] = [
    ("usd-three-places", "100.001", "USD"),
    ("jpy-fraction", "1.5", "JPY"),
    ("jpy-zero-fraction", "500.0", "JPY"),
    ("negative", "-5", "USD"),
    ("plus-sign", "+5", "USD"),
    ("exponent", "1e3", "USD"),
    ("exponent-upper", "1E3", "USD"),
    ("leading-space", " 5", "USD"),
    ("trailing-space", "5 ", "USD"),
    ("trailing-newline", "5\n", "USD"),
    ("trailing-point", "5.", "USD"),
    ("leading-point", ".5", "USD"),
    ("leading-zero", "05", "USD"),
    ("zero", "0", "USD"),
    ("zero-with-places", "0.00", "USD"),
    ("empty", "", "USD"),
    ("nan", "NaN", "USD"),
    ("infinity", "Infinity", "USD"),
    ("fullwidth-digits", "\uff11\uff10\uff10", "USD"),
    ("arabic-indic-digit", "\u0663", "USD"),
    ("underscore", "1_000", "USD"),
    ("thousands-comma", "1,000.00", "USD"),
    ("hex", "0x10", "USD"),
    ("16-integer-digits", "1" + "0" * MAX_INTEGER_DIGITS, "USD"),
    ("16-integer-digits-jpy", "1" + "0" * MAX_INTEGER_DIGITS, "JPY"),
]


@pytest.mark.parametrize(("amount", "currency"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid_amounts(amount: str, currency: str) -> None:
    with pytest.raises(InvalidAmount) as info:
        parse_amount(amount, currency)
    assert info.value.error == "invalid_amount"


@pytest.mark.parametrize("currency", ["XYZ", "usd", "", "US", "USDD", "XAU"], ids=repr)
def test_unknown_currency(currency: str) -> None:
    with pytest.raises(InvalidCurrency) as info:
        parse_amount("1", currency)
    assert info.value.error == "invalid_currency"
    with pytest.raises(InvalidCurrency):
        minor_units(currency)
    with pytest.raises(InvalidCurrency):
        format_minor(1, currency)


def test_minor_units_of_known_currencies() -> None:
    assert (minor_units("USD"), minor_units("JPY"), minor_units("BHD")) == (2, 0, 3)


def test_no_float_arithmetic() -> None:
    # 0.1 + 0.2 != 0.3 in binary floating point; integer minor units add exactly.
    assert parse_amount("0.30", "USD") == parse_amount("0.10", "USD") + parse_amount("0.20", "USD") == 30
    big = "9" * MAX_INTEGER_DIGITS + ".99"
    # Above 2**53: a float would lose the last cent.
    assert parse_amount(big, "USD") == 99_999_999_999_999_999
    assert float(big) * 100 != 99_999_999_999_999_999


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (10000, "USD", "100.00"),
        (5, "USD", "0.05"),
        (500, "JPY", "500"),
        (1250, "BHD", "1.250"),
        (1, "BHD", "0.001"),
    ],
    ids=["usd", "usd-cents-only", "jpy", "bhd", "bhd-one-fils"],
)
def test_format_minor(minor: int, currency: str, text: str) -> None:
    assert format_minor(minor, currency) == text
    assert str(Money(minor, currency)) == text


# 10**15 itself has 16 integer digits in a zero-decimal currency (JPY) and is refused like any
# other 16-digit amount, so the round trip is over the largest value every currency accepts.
@given(st.sampled_from(CURRENCIES), st.integers(min_value=1, max_value=10**15 - 1))
def test_round_trip(currency: str, value: int) -> None:
    text = format_minor(value, currency)
    units = MINOR_UNITS[currency]
    if units == 0:
        assert "." not in text
    else:
        assert len(text.split(".")[1]) == units
    assert parse_amount(text, currency) == value


@pytest.mark.parametrize("currency", ["JPY", "USD", "BHD"])
def test_round_trip_upper_bound(currency: str) -> None:
    """10**15 minor units: fine where there are decimals, 16 integer digits (refused) in JPY."""
    text = format_minor(10**15, currency)
    if MINOR_UNITS[currency] == 0:
        with pytest.raises(InvalidAmount):
            parse_amount(text, currency)
    else:
        assert parse_amount(text, currency) == 10**15


def _exact_or_refused(text: str, currency: str) -> None:
    units = MINOR_UNITS[currency]
    try:
        value = parse_amount(text, currency)
    except InvalidAmount:
        return
    assert type(value) is int
    assert Decimal(value) == Decimal(text) * 10**units
    # Only canonical text is accepted, so the result formats back to what was parsed (padded).
    assert Decimal(format_minor(value, currency)) == Decimal(text)


@given(st.sampled_from(CURRENCIES), st.text(alphabet="0123456789.", max_size=24))
def test_digit_text_is_exact_or_refused(currency: str, text: str) -> None:
    _exact_or_refused(text, currency)
    fraction = text.partition(".")[2]
    if re.fullmatch(r"[0-9]+\.[0-9]+", text) and len(fraction) > MINOR_UNITS[currency]:
        with pytest.raises(InvalidAmount):  # more places than the currency has: never rounded
            parse_amount(text, currency)


@given(
    st.sampled_from(CURRENCIES),
    st.decimals(min_value=0, max_value=Decimal("1e16"), allow_nan=False, allow_infinity=False, places=4),
)
def test_decimals_are_exact_or_refused(currency: str, amount: Decimal) -> None:
    text = format(amount, "f")
    _exact_or_refused(text, currency)
    units = MINOR_UNITS[currency]
    scaled = amount * 10**units
    if amount > 0 and scaled == scaled.to_integral_value() and amount < 10**MAX_INTEGER_DIGITS:
        # The same value written with exactly the currency's places is always accepted.
        canonical = format(amount.quantize(Decimal(1).scaleb(-units)), "f")
        assert parse_amount(canonical, currency) == int(scaled)
    elif scaled != scaled.to_integral_value():
        with pytest.raises(InvalidAmount):
            parse_amount(text, currency)
