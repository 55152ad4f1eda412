"""Checks of the numbers callers pass as options (timeouts, ratios, counts): a wrong type,
NaN, infinity or a value out of range is refused up front with an error naming the option,
rather than failing deep inside, or waiting for ever (a NaN deadline never comes)."""

from __future__ import annotations

import math

__all__ = ["check_count", "check_number"]


def check_number(name: str, value: object, least: float, most: float = math.inf, *,
                 seconds: bool = False, low: bool = False, optional: bool = True,
                 error: type[Exception] = ValueError) -> None:
    """``value`` is a real number above ``least`` (or at it, with ``low``) and at most
    ``most`` (or None, if ``optional``); else ``error`` naming it."""
    if value is None and optional:
        return
    unit = " seconds" if seconds else ""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or \
            not (least <= value if low else least < value) or value > most:
        bound = f"{'at least' if low else 'more than'} {least:g}{unit}" + (
            f" and at most {most:g}" if most < math.inf else "")
        raise error(f"{name} must be a number {bound}{' (or None)' if optional else ''}"
                    f", not {value!r:.60}")


def check_count(name: str, value: object, least: int, most: int, optional: bool = True, *,
                error: type[Exception] = ValueError) -> None:
    """``value`` is an int from ``least`` to ``most`` (or None, if ``optional``); else
    ``error`` naming it."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise error(f"{name} must be an integer from {least} to {most}"
                    f"{' (or None)' if optional else ''}, not {value!r:.60}")
