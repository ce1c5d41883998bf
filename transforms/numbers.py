"""Numbers out of text, unit conversion and decimal-exact rounding.

Why decimal-exact rounding: clinical and money values are written in decimal,
and ``2.675`` rounded half-up to 2 places must be ``2.68`` as on paper and in
PostgreSQL's ``round(numeric)``, although the float nearest 2.675 is a hair
below it (so ``round(2.675, 2)`` in Python gives ``2.67``).

The technique, vectorized with numpy: scale by ``10**decimals``; a scaled value
within a few float64 ulps of ``k + 0.5`` is treated as the exact tie its decimal
text was, and the tie is broken by the rule (half-up: away from zero, as
``decimal.ROUND_HALF_UP`` and PostgreSQL; half-even: to the even neighbour);
any other value goes to the nearest integer. This is exact for values with up
to 15 significant digits, the most float64 carries faithfully. ``decimal`` is
not used: it would mean one Python object per cell.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from transforms._common import (
    as_text,
    check_choice,
    check_decimals,
    check_name,
    finite_or_nan,
    require_columns,
)

Transform = Callable[[pd.DataFrame], pd.DataFrame]

ROUNDINGS = ("half_even", "half_up")
_TIE_ULPS = 8 * float(np.finfo(np.float64).eps)

# Canonical unit names and the spellings accepted for them (case-insensitive).
_ALIASES: dict[str, tuple[str, ...]] = {
    "lb": ("lb", "lbs", "pound", "pounds", "#"),
    "kg": ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"),
    "in": ("in", "inch", "inches", '"'),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "F": ("f", "°f", "degf", "fahrenheit"),
    "C": ("c", "°c", "degc", "celsius"),
    "glucose mg/dL": ("glucose mg/dl",),
    "glucose mmol/L": ("glucose mmol/l",),
}
_CANONICAL = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}
# (from, to) -> (before, times, divide, after): to = (from + before) * times / divide + after.
# Dividing by the exact constant (not multiplying by its float inverse) keeps
# 2.54 cm at exactly 1.0 in and 212 F at exactly 100.0 C.
UNITS: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("lb", "kg"): (0.0, 0.45359237, 1.0, 0.0),
    ("kg", "lb"): (0.0, 1.0, 0.45359237, 0.0),
    ("in", "cm"): (0.0, 2.54, 1.0, 0.0),
    ("cm", "in"): (0.0, 1.0, 2.54, 0.0),
    ("F", "C"): (-32.0, 5.0, 9.0, 0.0),
    ("C", "F"): (0.0, 9.0, 5.0, 32.0),
    ("glucose mg/dL", "glucose mmol/L"): (0.0, 0.0555, 1.0, 0.0),
    ("glucose mmol/L", "glucose mg/dL"): (0.0, 1.0, 0.0555, 0.0),
}
_IDENTITY = (0.0, 1.0, 1.0, 0.0)
# Text that holds a number, optionally with thousands commas and a unit after it.
_NUMBER_RE = re.compile(
    r"^\s*(?P<num>(?:[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?|[+-]?\.[0-9]+)"
    r"(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[^0-9\s].*?)?\s*$"
)


def convert_units(
    src: str,
    dst: str | None = None,
    *,
    factor: float | None = None,
    unit_from: str | None = None,
    unit_to: str | None = None,
    decimals: int | None = None,
    rounding: str = "half_even",
    as_text: bool = False,
) -> Transform:
    """Convert ``src`` into ``dst`` (default: ``src``) by ``factor`` or by units.

    Why: legacy text columns hold ``"154 lbs"``, ``" 1,234.5 "`` or ``"154.2"``;
    the new column wants a number in another unit, rounded like the paper form.

    Give either ``factor`` (``value * factor``) or ``unit_from`` and ``unit_to``
    from the table ``UNITS``: lb/kg, in/cm, F/C (with offsets) and
    ``"glucose mg/dL"``/``"glucose mmol/L"`` (factor 0.0555). Bare ``mg/dL`` is
    refused: its mmol/L factor depends on the analyte.

    Text is read as a number (``1e3`` too) with optional ``,`` thousands
    separators (US style: ``"1,5"`` is garbage, not 1.5) and an optional unit.
    With units, a value labelled with another unit (``"70 kg"`` when converting
    from lb) is NULL rather than converted wrongly; unknown labels are NULL too.
    Garbage, infinities and NULLs give NULL. Numeric columns are used as is.

    Output: float64 (NaN for NULL); with ``as_text=True`` (needs ``decimals``),
    text with exactly ``decimals`` digits (object dtype, ``None`` for NULL).

    >>> df = pd.DataFrame({"w": ["154 lbs", " 1,234.5 ", "70 kg", "n/a"]})
    >>> convert_units("w", "kg", unit_from="lb", unit_to="kg", decimals=2)(df)["kg"].tolist()
    [69.85, 559.96, nan, nan]
    """
    check_name(src, "src")
    target = src if dst is None else check_name(dst, "dst")
    (before, times, divide, after), accepted = _conversion(factor, unit_from, unit_to)
    digits = None if decimals is None else check_decimals(decimals)
    check_choice(rounding, ROUNDINGS, "rounding")
    if as_text and digits is None:
        raise ValueError("as_text=True needs decimals")

    def convert_units_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [src])
        values = (parse_numbers(df[src], units=accepted) + before) * times / divide + after
        return df.assign(**{target: _finish(values, df.index, digits, rounding, as_text)})

    return convert_units_fn


def round_numeric(
    src: str,
    decimals: int,
    *,
    dst: str | None = None,
    rounding: str = "half_even",
    as_text: bool = False,
) -> Transform:
    """Round ``src`` to ``decimals`` places, decimal-exact, into ``dst`` (default: ``src``).

    Why: ``numpy.round`` and Python's ``round`` work on the binary value and
    turn ``2.675`` into ``2.67``; this rounds the decimal the value was written
    as (see the module docstring). ``rounding="half_up"`` rounds ties away from
    zero like PostgreSQL ``round(numeric)``; ``"half_even"`` to the even digit.

    Text is parsed as in ``convert_units`` but must not carry a unit; garbage
    and NULLs give NULL. Output float64, or fixed-digit text with ``as_text``.

    >>> df = pd.DataFrame({"x": [2.675, "2.665", None]})
    >>> round_numeric("x", 2, rounding="half_up", as_text=True)(df)["x"].tolist()
    ['2.68', '2.67', None]
    """
    check_name(src, "src")
    target = src if dst is None else check_name(dst, "dst")
    digits = check_decimals(decimals)
    check_choice(rounding, ROUNDINGS, "rounding")

    def round_numeric_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [src])
        values = parse_numbers(df[src], units=())
        return df.assign(**{target: _finish(values, df.index, digits, rounding, as_text)})

    return round_numeric_fn


def parse_numbers(
    values: pd.Series[Any], *, units: tuple[str, ...] | None = None
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """float64 for each value; NaN for NULL, garbage and infinities.

    ``units``: the accepted unit labels after the number (lower case); ``()``
    accepts none, ``None`` accepts every label in the units table.
    """
    if pd.api.types.is_bool_dtype(values.dtype):
        return np.full(len(values), np.nan)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return finite_or_nan(values.to_numpy(dtype="float64", na_value=np.nan))
    text = as_text(values)
    # Plain numbers are parsed in C; only the rest (units, thousands commas) needs the regex.
    parsed = pd.to_numeric(text, errors="coerce")
    numbers = parsed.to_numpy(dtype="float64", na_value=np.nan, copy=True)
    left = np.isnan(numbers) & text.notna().to_numpy()
    if left.any():
        allowed = frozenset(_CANONICAL if units is None else units)
        numbers[left] = _parse_rest(text.loc[left].tolist(), allowed)
    return finite_or_nan(numbers)


def _parse_rest(cells: list[Any], allowed: frozenset[str]) -> np.ndarray[Any, Any]:
    """Numbers with units or thousands commas: one compiled-regex match per cell.

    ``Series.str.extract`` runs the same per-cell match without pyarrow, with
    about three times the overhead; only the cells ``to_numeric`` refused get here.
    """
    found: list[str | None] = []
    for cell in cells:
        match = _NUMBER_RE.match(cell) if isinstance(cell, str) else None
        unit = match["unit"] if match else None
        ok = match is not None and (unit is None or unit.lower() in allowed)
        found.append(match["num"].replace(",", "") if ok and match else None)
    parsed = pd.to_numeric(pd.Series(found, dtype=object), errors="coerce")
    return parsed.to_numpy(dtype="float64", na_value=np.nan)


def round_half(
    values: np.ndarray[Any, np.dtype[np.float64]], decimals: int, rounding: str = "half_even"
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """``values`` rounded to ``decimals`` places with decimal tie-breaking (see module)."""
    scale = 10.0**decimals
    magnitude = np.abs(values * scale)
    low = np.floor(magnitude)
    frac = magnitude - low
    tie = np.abs(frac - 0.5) <= magnitude * _TIE_ULPS
    nearest = np.where(frac > 0.5, low + 1.0, low)
    at_tie = low + 1.0 if rounding == "half_up" else low + np.mod(low, 2.0)
    rounded = np.where(tie, at_tie, nearest)
    # + 0.0 turns -0.0 into 0.0, so "-0.00" is never written.
    return np.asarray(np.copysign(rounded, values) / scale + 0.0, dtype=np.float64)


def fixed_text(
    values: np.ndarray[Any, np.dtype[np.float64]], decimals: int, index: pd.Index[Any]
) -> pd.Series[Any]:
    """Already rounded ``values`` as text with exactly ``decimals`` digits; None for NaN.

    A list comprehension over ``str.format``: it measured faster than
    ``np.char.mod`` and than assembling digits with ``np.strings`` ufuncs, and
    formatting an already rounded float to the same digit count is exact.
    """
    fmt = f"{{:.{decimals}f}}".format
    texts = [fmt(v) if v == v else None for v in values.tolist()]  # v != v: NaN
    return pd.Series(texts, index=index, dtype=object)


def _finish(
    values: np.ndarray[Any, np.dtype[np.float64]],
    index: pd.Index[Any],
    decimals: int | None,
    rounding: str,
    as_text: bool,
) -> pd.Series[Any]:
    if decimals is not None:
        values = round_half(values, decimals, rounding)
    if as_text and decimals is not None:
        return fixed_text(values, decimals, index)
    return pd.Series(values, index=index, dtype="float64")


def _conversion(
    factor: float | None, unit_from: str | None, unit_to: str | None
) -> tuple[tuple[float, float, float, float], tuple[str, ...] | None]:
    """The ``UNITS`` entry and the accepted unit labels for the configuration given."""
    if factor is not None:
        if unit_from is not None or unit_to is not None:
            raise ValueError("give either factor or unit_from/unit_to, not both")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise ValueError("factor must be a finite number")
        if not np.isfinite(factor):
            raise ValueError("factor must be a finite number")
        return (0.0, float(factor), 1.0, 0.0), None
    if unit_from is None or unit_to is None:
        raise ValueError("give factor, or both unit_from and unit_to")
    source = _unit(unit_from, "unit_from")
    target = _unit(unit_to, "unit_to")
    if source == target:
        return _IDENTITY, _ALIASES[source]
    if (source, target) not in UNITS:
        raise ValueError(f"no conversion from {source!r} to {target!r} in the units table")
    return UNITS[(source, target)], _ALIASES[source]


def _unit(name: str, what: str) -> str:
    check_name(name, what)
    key = name.strip().lower()
    if key in ("mg/dl", "mmol/l"):
        raise ValueError(f"{what}: mg/dL to mmol/L depends on the analyte; use 'glucose {name}'")
    if key not in _CANONICAL:
        raise ValueError(f"{what} is not in the units table: {', '.join(_ALIASES)}")
    return _CANONICAL[key]
