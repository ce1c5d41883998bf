"""Dates written many ways, parsed into one: the plan's "type conversions" for dates.

Why per-format passes: ``pd.to_datetime`` with one explicit ``format`` is
vectorized and never guesses, so each format is tried on the rows still
unparsed, in a fixed order. Guessing per row (``format="mixed"``) would read
``03/02/1990`` as March in one row and February in the next.

Why shapes: a failed ``to_datetime`` attempt costs about as much as a
successful one, so trying 17 formats on every row is slow. Each value's shape
(digits as ``9``, letters as ``a``: ``99/99/9999``) is computed with numpy, the
few distinct shapes are matched against each format's shape once, and every
format is only tried on rows whose shape it can parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from transforms import _chars as ch
from transforms._common import (
    as_text,
    check_choice,
    check_name,
    require_columns,
)

Transform = Callable[[pd.DataFrame], pd.DataFrame]

_OUTPUTS = ("date", "datetime")
_UNIT: Literal["datetime64[us]"] = "datetime64[us]"
_WIDTH = 64  # longer text is not a date

# Default formats, tried in this order: what a database or an API writes first,
_ISO = (
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
)
# then what people type (commas, ordinals and extra spaces are removed first),
_OTHER = (
    "%Y/%m/%d",
    "%Y.%m.%d",
    "%Y%m%d",
    "%d %b %Y",
    "%d %B %Y",
    "%b %d %Y",
    "%B %d %Y",
)
# then numeric day and month, in the order ``dayfirst`` says.
_MONTH_FIRST = ("%m/%d/%Y", "%m-%d-%Y", "%m.%d.%Y")
_DAY_FIRST = ("%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y")

# A trailing UTC offset after a time of day: "...10:00:00+02:00", "...10:00Z".
_OFFSET_RE = re.compile(
    r"^(?P<body>.*?[0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)"
    r"\s*(?P<off>Z|UTC|GMT|[+-][0-9]{2}(?::?[0-9]{2})?)$",
    re.IGNORECASE,
)
_OFFSET_PARTS_RE = re.compile(r"^(?P<sign>[+-])(?P<h>[0-9]{2}):?(?P<m>[0-9]{2})?$")
_OFFSET_SHAPE = re.compile(r".*9{1,2}:99(?::99(?:\.9+)?)?\s*(?:a{1,3}|[+-]99(?::?99)?)")
# Shapes worth tidying: commas, ordinals (3rd), long words (Sept), odd whitespace.
_TIDY_SHAPE = re.compile(r",|9aa|aaaa|\s\s|[^\S ]")
# What each strptime directive can look like in a shape: loosely (to_datetime decides),
# and with every digit when it touches another number (19900203, never 1990023).
_DIRECTIVES: dict[str, tuple[str, str]] = {
    **dict.fromkeys("mdHIMS", ("9{1,2}", "99")),
    **dict.fromkeys("bBaAp", ("a+", "a+")),
    "Y": ("9{4}", "9{4}"),
    "y": ("99", "99"),
    "j": ("9{1,3}", "999"),
    "f": ("9{1,9}", "9{1,9}"),
}
_NUMERIC = frozenset("YymdHIMSjf")


def standardize_dates(
    src: str,
    dst: str | None = None,
    *,
    formats: Sequence[str] | None = None,
    dayfirst: bool = False,
    tz: str | None = None,
    output: str = "date",
) -> Transform:
    """Parse ``src`` (dates as text in mixed formats) into ``dst`` (default: ``src``).

    Why: legacy columns hold ``1990-02-03``, ``03/02/1990``, ``3 Feb 1990`` and
    ``19900203`` side by side; a PostgreSQL ``date`` column takes one form only.

    Default formats, in order: ISO dates and timestamps; ``1990/02/03``,
    ``1990.02.03``, ``19900203``; ``3 Feb 1990``, ``3 February 1990``,
    ``Feb 3, 1990``, ``February 3rd, 1990``; then ``03/02/1990`` (also with ``-``
    or ``.``) read month first, or day first when ``dayfirst=True``. Two-digit
    years are never guessed (a 1950 birth would become 2050): give them in
    ``formats`` if you mean it. Run-together digits must be complete
    (``19900203``; ``1990023`` is NULL, not a guess).

    ``formats`` replaces the defaults by strptime patterns tried in order on the
    stripped text. A trailing UTC offset (``Z``, ``+02:00``, ``-0500``) after a
    time of day is split off first, so patterns must not contain ``%z``.

    ``tz`` (an IANA zone name): timestamps that carry an offset are converted to
    that zone before the date is taken. Without ``tz`` the wall-clock time as
    written is kept: ``1990-02-03T23:30:00-05:00`` is the 3rd, as the writer
    meant, not the 4th as in UTC. Values without an offset are never shifted.

    ``output="date"``: ISO text ``YYYY-MM-DD`` (object dtype, ``None`` for NULL),
    which COPY loads into a ``date`` column as is. ``output="datetime"``: a naive
    ``datetime64[us]`` column (NaT for NULL), for a ``timestamp`` column.

    Unparseable values, impossible dates (``31/02/1990``) and NULLs give NULL.

    >>> df = pd.DataFrame({"dob": ["1990-02-03", "03/02/1990", "3 Feb 1990", "x"]})
    >>> standardize_dates("dob", dayfirst=True)(df)["dob"].tolist()
    ['1990-02-03', '1990-02-03', '1990-02-03', None]
    """
    check_name(src, "src")
    target = src if dst is None else check_name(dst, "dst")
    check_choice(output, _OUTPUTS, "output")
    if not isinstance(dayfirst, bool):
        raise ValueError("dayfirst must be True or False")
    zone = _check_tz(tz)
    tried: tuple[str, ...]
    if formats is None:
        tried = _ISO + _OTHER + (_DAY_FIRST if dayfirst else _MONTH_FIRST)
    else:
        tried = _check_formats(formats)
    shapes = [(fmt, _shape_pattern(fmt)) for fmt in tried]
    tidy = formats is None

    def standardize_dates_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [src])
        parsed = _parse(df[src], shapes, tidy=tidy, tz=zone)
        parsed.index = df.index
        if output == "datetime":
            return df.assign(**{target: parsed})
        days = parsed.to_numpy().astype("datetime64[D]").astype(str)  # ISO, in C
        text = pd.Series(days, index=df.index, dtype=object).where(parsed.notna(), None)
        return df.assign(**{target: text})

    return standardize_dates_fn


def _check_tz(tz: str | None) -> str | None:
    if tz is None:
        return None
    check_name(tz, "tz")
    try:
        pd.Timestamp("2000-01-01", tz="UTC").tz_convert(tz)
    except Exception:
        raise ValueError("tz must be an IANA time zone name such as 'Europe/Paris'") from None
    return tz


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str) or not formats:
        raise ValueError("formats must be a non-empty list of strptime patterns")
    for fmt in formats:
        if not isinstance(fmt, str) or "%" not in fmt:
            raise ValueError("formats must be a non-empty list of strptime patterns")
        if "%z" in fmt or "%Z" in fmt:
            raise ValueError("formats must not contain %z or %Z: offsets are handled by tz")
    return tuple(formats)


def _shape_pattern(fmt: str) -> re.Pattern[str]:
    """A regex over shapes for the texts ``fmt`` can parse (see ``_DIRECTIVES``)."""
    tokens: list[tuple[str, str]] = []  # ("%", directive) or ("", literal character)
    chars = iter(fmt)
    for char in chars:
        tokens.append(("%", next(chars, "")) if char == "%" else ("", char))
    numeric = [kind == "%" and text in _NUMERIC for kind, text in tokens]
    parts: list[str] = []
    for i, (kind, text) in enumerate(tokens):
        if kind == "%":
            touching = (i > 0 and numeric[i - 1]) or (i + 1 < len(tokens) and numeric[i + 1])
            loose, fixed = _DIRECTIVES.get(text, (".*?", ".*?"))
            parts.append(re.escape("%") if text == "%" else fixed if touching else loose)
        elif text.isspace():
            if parts[-1:] != [r"\s+"]:
                parts.append(r"\s+")
        elif text.isascii() and text.isalpha():
            parts.append("a")
        elif text.isascii() and text.isdigit():
            parts.append("9")
        else:
            parts.append(re.escape(text))
    return re.compile("".join(parts))


def _parse(
    values: pd.Series[Any],
    formats: list[tuple[str, re.Pattern[str]]],
    *,
    tidy: bool,
    tz: str | None,
) -> pd.Series[Any]:
    """Naive timestamps (``datetime64[us]``, positional index); NaT where nothing fits."""
    values = values.reset_index(drop=True)  # positions from here on: the index may repeat
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        zoned: pd.Series[Any] = values.dt.tz_convert(tz) if tz is not None else values
        naive: pd.Series[Any] = zoned.dt.tz_localize(None)
        return naive.astype(_UNIT)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.astype(_UNIT)
    text: pd.Series[Any] = as_text(values).str.strip()
    shapes = _shapes(text)
    if tidy:
        messy = _rows_matching(shapes, _TIDY_SHAPE.search)
        if messy.any():
            text.loc[messy] = _tidy(text.loc[messy])
            shapes[messy] = _shapes(text.loc[messy])
    has_offset = _rows_matching(shapes, _OFFSET_SHAPE.fullmatch)
    offsets = pd.Series(pd.NA, index=text.index, dtype="string")
    if has_offset.any():
        parts = text.loc[has_offset].str.extract(_OFFSET_RE)
        split = parts["off"].notna().to_numpy()
        rows = np.flatnonzero(has_offset)[split]
        text.iloc[rows] = parts["body"].to_numpy()[split]
        offsets.iloc[rows] = parts["off"].to_numpy()[split]
        shapes[rows] = _shapes(text.iloc[rows])
        has_offset[:] = False
        has_offset[rows] = True
    local = _try_formats(text, shapes, formats)
    if not has_offset.any():
        return local
    if tz is not None:
        zoned_rows = _to_zone(local.loc[has_offset], offsets.loc[has_offset], tz)
        return local.where(~has_offset, zoned_rows)
    bad = has_offset.copy()
    bad[has_offset] = _offset_minutes(offsets.loc[has_offset]).isna().to_numpy()
    return local.where(~bad)


def _shapes(text: pd.Series[Any]) -> np.ndarray[Any, np.dtype[np.object_]]:
    """Each value's shape as text (``99/99/9999``); None for NULL and overlong values."""
    chars, lengths = ch.char_matrix(text, _WIDTH)
    return ch.to_text(ch.shape(chars), lengths >= 0, text.index).to_numpy(copy=True)


def _rows_matching(
    shapes: np.ndarray[Any, np.dtype[np.object_]], test: Callable[[str], object]
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Rows whose shape passes ``test``, judged once per distinct shape."""
    codes, uniques = pd.factorize(shapes)
    hits = np.array([test(u) is not None for u in uniques], dtype=bool)
    return np.append(hits, False)[codes]  # code -1 (NULL) picks the appended False


def _try_formats(
    text: pd.Series[Any],
    shapes: np.ndarray[Any, np.dtype[np.object_]],
    formats: list[tuple[str, re.Pattern[str]]],
) -> pd.Series[Any]:
    """Each format on the rows of a shape it can parse and not parsed yet, in order."""
    out = pd.Series(pd.NaT, index=text.index, dtype=_UNIT)
    codes, uniques = pd.factorize(shapes)
    todo = codes >= 0
    for fmt, pattern in formats:
        if not todo.any():
            break
        fits = np.array([pattern.fullmatch(u) is not None for u in uniques], dtype=bool)
        rows = todo & np.append(fits, False)[codes]
        if not rows.any():
            continue
        got = pd.to_datetime(text.loc[rows], format=fmt, errors="coerce").astype(_UNIT)
        out.loc[rows] = got.to_numpy()
        todo &= out.isna().to_numpy()
    return out


def _tidy(text: pd.Series[Any]) -> pd.Series[Any]:
    """Commas, ordinals (3rd), "Sept" and doubled spaces out of the way of the formats."""
    text = text.str.replace(",", " ", regex=False)
    text = text.str.replace(r"(?<=[0-9])(?:st|nd|rd|th)\b", "", regex=True, flags=re.IGNORECASE)
    text = text.str.replace(r"\bsept\b", "Sep", regex=True, flags=re.IGNORECASE)
    return text.str.replace(r"\s+", " ", regex=True).str.strip()


def _offset_minutes(offsets: pd.Series[Any]) -> pd.Series[Any]:
    """Minutes east of UTC for each offset text; NA for none or an impossible one."""
    upper = offsets.str.upper()
    parts = offsets.str.extract(_OFFSET_PARTS_RE)
    hours = pd.to_numeric(parts["h"], errors="coerce")
    minutes = pd.to_numeric(parts["m"], errors="coerce").fillna(0)
    sign = parts["sign"].map({"+": 1, "-": -1})
    total = (sign * (hours * 60 + minutes)).where((hours <= 23) & (minutes <= 59))
    zero = upper.isin(["Z", "UTC", "GMT"]).fillna(False).astype(bool)
    return total.where(~zero, 0).astype("Float64")


def _to_zone(local: pd.Series[Any], offsets: pd.Series[Any], tz: str) -> pd.Series[Any]:
    """Wall-clock times written with ``offsets``, as wall-clock times in ``tz``."""
    minutes = _offset_minutes(offsets).astype("float64")
    utc = local - pd.to_timedelta(minutes, unit="min")
    zoned = utc.dt.tz_localize("UTC").dt.tz_convert(tz).dt.tz_localize(None)
    return zoned.astype(_UNIT)
