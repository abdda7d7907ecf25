"""Number ranges as GBNF: the integers or decimals between two bounds, digit by digit."""

from __future__ import annotations

from minerva.prompting.gbnf import gbnf_literal

MAX_INT_DIGITS = 15
MAX_FRACTION_DIGITS = 16


def _digits_between(low: str, high: str) -> list[str]:
    """GBNF sequences for the same-length digit strings from ``low`` to ``high``."""
    if low == high:
        return [gbnf_literal(low)]
    prefix = 0
    while low[prefix] == high[prefix]:
        prefix += 1
    head = gbnf_literal(low[:prefix]) + " " if prefix else ""
    rest = len(low) - prefix - 1
    a, b = int(low[prefix]), int(high[prefix])
    if low[prefix + 1 :] == "0" * rest and high[prefix + 1 :] == "9" * rest:
        return [head + _digit_run(a, b, rest)]
    options = [head + f'"{a}" ' + _group(_digits_between(low[prefix + 1 :], "9" * rest))]
    if b - a > 1:
        options.append(head + _digit_run(a + 1, b - 1, rest))
    options.append(head + f'"{b}" ' + _group(_digits_between("0" * rest, high[prefix + 1 :])))
    return options


def _group(options: list[str]) -> str:
    return options[0] if len(options) == 1 else "( " + " | ".join(options) + " )"


def _digit_run(low: int, high: int, count: int) -> str:
    """A digit from ``low`` to ``high`` followed by ``count`` free digits."""
    if (low, high) == (0, 9):
        return "[0-9]" if count == 0 else f"[0-9]{{{count + 1}}}"
    first = f'"{low}"' if low == high else f"[{low}-{high}]"
    return first if count == 0 else first + (" [0-9]" if count == 1 else f" [0-9]{{{count}}}")


def natural_range(low: int, high: int | None) -> str:
    """GBNF for the decimal naturals from ``low`` to ``high``, at most MAX_INT_DIGITS digits.

    Values past MAX_INT_DIGITS digits are left out (a narrowing: 2**53-1 bounds become 15 digits).
    """
    top = min(high, 10**MAX_INT_DIGITS - 1) if high is not None else 10**MAX_INT_DIGITS - 1
    if low > top:
        raise ValueError("empty range")
    options = []
    full_lengths: list[int] = []
    for length in range(len(str(low)), len(str(top)) + 1):
        first = max(low, 10 ** (length - 1) if length > 1 else 0)
        last = min(top, 10**length - 1)
        if first > last:
            continue
        if length == 1 and first <= 1 and last == 9:
            options.extend(['"0"'] if first == 0 else [])
            full_lengths.append(1)
            continue
        if first == 10 ** (length - 1) and last == 10**length - 1 and length > 1:
            full_lengths.append(length)
            continue
        options.extend(_digits_between(str(first), str(last)))
    if full_lengths:
        shortest, longest = full_lengths[0] - 1, full_lengths[-1] - 1
        span = f"{{{shortest}}}" if shortest == longest else f"{{{shortest},{longest}}}"
        tail = "" if span == "{0}" else " [0-9]" + ("" if span == "{1}" else span)
        options.append("[1-9]" + tail)
    return " | ".join(options)


def integer_range(low: int | None, high: int | None) -> str:
    """GBNF for the integers in [low, high] (either end open when None)."""
    parts = []
    if high is None or high >= 0:
        parts.append("( " + natural_range(max(low or 0, 0) if low is not None else 0, high) + " )")
    if low is None or low < 0:
        magnitude_low = 1 if high is None or high >= 0 else -high
        magnitude_high = None if low is None else -low
        parts.append('"-" ( ' + natural_range(magnitude_low, magnitude_high) + " )")
    return " | ".join(parts)


def decimal_options(a: int, a_incl: bool, b: int | None, b_incl: bool, sign: str) -> list[str]:
    """GBNF options for decimals whose magnitude lies between integers a and b (None: unbounded)."""
    fraction = f'( "." [0-9]{{1,{MAX_FRACTION_DIGITS}}} )?'
    nonzero = f'"." [0-9]{{0,{MAX_FRACTION_DIGITS - 1}}} [1-9]'
    zeros = f'( "." "0"{{1,{MAX_FRACTION_DIGITS}}} )?'
    if b is not None and a >= b:
        return [f'{sign}"{a}" {zeros}'] if a == b and a_incl and b_incl else []
    options = [f'{sign}"{a}" ' + (fraction if a_incl else nonzero)]
    if b is None or b - 1 >= a + 1:
        options.append(f"{sign}( {natural_range(a + 1, None if b is None else b - 1)} ) {fraction}")
    if b is not None and b_incl:
        options.append(f'{sign}"{b}" {zeros}')
    return options
