"""Money as exact integers of minor units, parsed from and formatted to decimal strings.

An amount never passes through a float. ``"100.00"`` USD is 10000 cents; ``"500"`` JPY is 500
yen; ``"1.250"`` BHD is 1250 fils. Amounts are validated against the ISO 4217 minor units of
their currency: more decimal places than the currency has is an error, never a rounding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from payments_svc.errors import InvalidAmount, InvalidCurrency

__all__ = ["MAX_INTEGER_DIGITS", "MINOR_UNITS", "Money", "format_minor", "minor_units", "parse_amount"]

# ISO 4217 (list one, current funds) alphabetic codes and their minor units. Funds and precious
# metals without a minor unit (XAU, XDR, ...) are deliberately absent: they are not payable here.
_TWO_DECIMALS = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD CAD
    CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD
    HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD
    MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON
    RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD
    TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWG
"""
_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys(_TWO_DECIMALS.split(), 2),
    **dict.fromkeys(_ZERO_DECIMALS.split(), 0),
    **dict.fromkeys(_THREE_DECIMALS.split(), 3),
}

MAX_INTEGER_DIGITS = 15
"""Digits allowed before the decimal point: large enough for any payment, small enough to fit
a signed 64-bit integer of minor units with room to add refunds."""

# ASCII digits only ([0-9], not \\d, which matches other scripts' digits); no sign, exponent,
# spaces, leading zeros or bare decimal point.
_AMOUNT = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")


def minor_units(currency: str) -> int:
    """The ISO 4217 minor units of ``currency`` (upper-case alphabetic code)."""
    units = MINOR_UNITS.get(currency)
    if units is None:
        raise InvalidCurrency("currency must be an ISO 4217 code such as USD, EUR or JPY")
    return units


def parse_amount(amount: str, currency: str) -> int:
    """A positive decimal string in ``currency`` as an integer number of minor units."""
    units = minor_units(currency)
    m = _AMOUNT.fullmatch(amount)
    if m is None:
        raise InvalidAmount('amount must be a plain decimal string such as "100.00"')
    whole, fraction = m.group(1), m.group(2) or ""
    if len(whole) > MAX_INTEGER_DIGITS:
        raise InvalidAmount("amount is too large")
    if len(fraction) > units:
        raise InvalidAmount(f"{currency} amounts have at most {units} decimal places")
    scale: int = 10**units
    value = int(whole) * scale + int((fraction + "0" * units)[:units] or "0")
    if value <= 0:
        raise InvalidAmount("amount must be greater than zero")
    return value


def format_minor(value: int, currency: str) -> str:
    """Minor units as a decimal string with exactly the currency's decimal places."""
    units = minor_units(currency)
    if units == 0:
        return str(value)
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), 10**units)
    return f"{sign}{whole}.{fraction:0{units}d}"


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: integer minor units of a currency."""

    minor: int
    currency: str

    @classmethod
    def parse(cls, amount: str, currency: str) -> Money:
        return cls(parse_amount(amount, currency), currency)

    def __str__(self) -> str:
        return format_minor(self.minor, self.currency)
