"""Text clean-up, phone numbers and postal codes in one canonical form each.

Why canonical forms: the same person typed three ways (``" Ann  Lee"``,
``"ann lee"``, ``"Ann Lee"``) or the same phone with and without punctuation
defeats matching, deduplication and unique indexes. One form per value makes
equal things equal. Everything here is pandas ``.str`` methods over the whole
column; a value that cannot be brought to the form is NULL, never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from transforms import _chars as ch
from transforms._common import (
    as_text,
    check_choice,
    check_name,
    check_names,
    require_columns,
    to_object,
)

Transform = Callable[[pd.DataFrame], pd.DataFrame]
Form = Literal["NFC", "NFD", "NFKC", "NFKD"]

_CASES = ("lower", "upper", "title")
_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
_PHONE_REGIONS = ("US", "CA")
_PHONE_STYLES = ("E164", "national")
_COUNTRIES = ("US", "CA", "GB")

_PHONE_WIDTH = 40  # longer text is not one phone number
_POSTAL_WIDTH = 24
# Postal code shapes (digits as 9, letters as A) once spaces and hyphens are removed.
_US_SHAPES = ("99999", "999999999")
_CA_SHAPES = ("A9A9A9",)
# Royal Mail: outward code A9, A99, AA9, AA99, A9A or AA9A, then inward code 9AA.
_GB_SHAPES = ("A99AA", "A999AA", "AA99AA", "AA999AA", "A9A9AA", "AA9A9AA")
# Canada Post: no D F I O Q U anywhere, no W Z as the first letter.
_CA_LETTERS = np.zeros(128, dtype=bool)
_CA_LETTERS[[ord(c) for c in "ABCEGHJKLMNPRSTVWXYZ"]] = True
_CA_FIRST = _CA_LETTERS.copy()
_CA_FIRST[[ord("W"), ord("Z")]] = False


def normalize_strings(
    cols: str | Iterable[str],
    *,
    trim: bool = True,
    collapse_spaces: bool = True,
    case: str | None = None,
    unicode_form: str | None = "NFC",
    empty_as_null: bool = True,
) -> Transform:
    """Clean the text columns ``cols`` in place (same column names).

    Why: stray spaces, tabs, doubled spaces, decomposed accents (``e`` +
    combining acute vs ``é``) and mixed case make equal values compare unequal.

    Steps, in order: Unicode normalization (``unicode_form``: NFC, NFD, NFKC,
    NFKD or None), ``collapse_spaces`` (any run of whitespace, tabs, newlines and
    no-break spaces included, becomes one space), ``trim``, ``case`` (None,
    "lower", "upper" or "title"; title follows ``str.title``, so ``o'neil``
    becomes ``O'Neil``), then ``empty_as_null`` (``""`` becomes NULL). Non-text
    values are kept as their ``str`` (``12`` becomes ``"12"``). Output: object
    dtype, ``None`` for NULL.

    >>> df = pd.DataFrame({"name": ["  Ann \\t Lee ", "", None]})
    >>> normalize_strings("name", case="title")(df)["name"].tolist()
    ['Ann Lee', None, None]
    """
    columns = check_names(cols, "cols")
    for flag, what in (
        (trim, "trim"),
        (collapse_spaces, "collapse_spaces"),
        (empty_as_null, "empty_as_null"),
    ):
        if not isinstance(flag, bool):
            raise ValueError(f"{what} must be True or False")
    if case is not None:
        check_choice(case, _CASES, "case")
    if unicode_form is not None:
        check_choice(unicode_form, _FORMS, "unicode_form")

    def normalize_strings_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, columns)
        return df.assign(**{c: to_object(_clean(df[c])) for c in columns})

    def _clean(values: pd.Series[Any]) -> pd.Series[Any]:
        text = as_text(values)
        if unicode_form is not None:
            text = text.str.normalize(cast(Form, unicode_form))
        if collapse_spaces:
            # Only values with a double space or a tab, newline, no-break space... need
            # the replacement; finding them first is about twice as fast on clean data.
            found = text.str.contains("  ", regex=False) | text.str.contains(r"[^\S ]")
            odd = found.to_numpy(dtype=bool, na_value=False)
            if odd.any():
                collapsed = text.loc[odd].str.replace(r"\s+", " ", regex=True)
                text.loc[odd] = collapsed.to_numpy()
        if trim:
            text = text.str.strip()
        if case == "lower":
            text = text.str.lower()
        elif case == "upper":
            text = text.str.upper()
        elif case == "title":
            text = text.str.title()
        if empty_as_null:
            text = text.where(text != "")
        return text

    return normalize_strings_fn


def format_phone(
    src: str, dst: str | None = None, *, region: str = "US", style: str = "E164"
) -> Transform:
    """Phone numbers from ``src`` in one form, into ``dst`` (default: ``src``).

    Why: ``(555) 234-5678``, ``555.234.5678`` and ``+1 555 234 5678`` are the
    same line; E.164 (``+15552345678``) is what SMS and telephony APIs take.

    The digits are extracted (so extensions, letters and 12+ digit strings do
    not fit and become NULL); North American numbers (``region`` "US" or "CA")
    need 10 digits, or 11 starting with 1, and a valid area code and exchange
    (first digit 2-9: ``555-123-4567`` is not a diallable number and is NULL).
    ``style="E164"`` gives ``+15552345678``, ``"national"`` ``(555) 234-5678``.
    Integer columns are read as digits; text over 40 characters is NULL.
    Output: object dtype, ``None`` for NULL.

    >>> df = pd.DataFrame({"tel": ["555.234.5678", "+1 (555) 234-5678", "12345", None]})
    >>> format_phone("tel")(df)["tel"].tolist()
    ['+15552345678', '+15552345678', None, None]
    """
    check_name(src, "src")
    target = src if dst is None else check_name(dst, "dst")
    check_choice(region, _PHONE_REGIONS, "region")
    check_choice(style, _PHONE_STYLES, "style")

    def format_phone_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [src])
        chars, _ = ch.char_matrix(_digits_text(df[src]), _PHONE_WIDTH, min_width=11)
        digits, count = ch.compact(chars, ch.is_digit(chars))
        ok = (count == 10) | ((count == 11) & (digits[:, 0] == ord("1")))
        start = np.clip(count - 10, 0, digits.shape[1] - 10)
        ten = np.take_along_axis(digits, start[:, None] + np.arange(10), axis=1)
        ok &= (ten[:, 0] >= ord("2")) & (ten[:, 3] >= ord("2"))  # area code, exchange
        n = len(ten)
        if style == "E164":
            parts = [ch.constant(n, "+"), ch.constant(n, "1"), ten]
        else:
            parts = [ch.constant(n, "("), ten[:, :3], ch.constant(n, ")"), ch.constant(n, " ")]
            parts += [ten[:, 3:6], ch.constant(n, "-"), ten[:, 6:]]
        out = ch.to_text(np.hstack(parts), ok, df.index)
        return df.assign(**{target: out})

    return format_phone_fn


def format_postal(src: str, dst: str | None = None, *, country: str = "US") -> Transform:
    """Postal codes from ``src`` in the ``country``'s written form, into ``dst``.

    Why: ``"k1a0b1"``, ``"K1A-0B1"`` and ``"K1A 0B1"`` are one Canadian code;
    address validation and geocoding want the last.

    - ``"US"``: ``12345`` or ``12345-6789`` (from ``123456789`` too). Integer
      columns, where a leading zero was lost (``2134`` for ``02134``), are
      zero-padded to 5 digits; text is never padded.
    - ``"CA"``: ``A1A 1A1``, letters Canada Post uses only.
    - ``"GB"``: upper case, one space before the last 3 characters (``SW1A 1AA``).

    Spaces and hyphens are ignored when matching; anything else that does not
    fit is NULL. Output: object dtype, ``None`` for NULL.

    >>> df = pd.DataFrame({"pc": ["k1a0b1", "K1A-0B1", "12345", None]})
    >>> format_postal("pc", country="CA")(df)["pc"].tolist()
    ['K1A 0B1', 'K1A 0B1', None, None]
    """
    check_name(src, "src")
    target = src if dst is None else check_name(dst, "dst")
    check_choice(country, _COUNTRIES, "country")

    def format_postal_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [src])
        values = df[src]
        if country == "US" and pd.api.types.is_numeric_dtype(values.dtype):
            digits = _digits_text(values)
            values = digits.where(digits.str.len() <= 5).str.zfill(5)
        chars, _ = ch.char_matrix(values, _POSTAL_WIDTH, min_width=9)
        chars = ch.upper(chars)
        code, count = ch.compact(chars, (chars != 0) & ~ch.is_space(chars) & (chars != ord("-")))
        shapes = ch.to_text(_code_shape(code), np.ones(len(code), dtype=bool), df.index)
        if country == "US":
            ok = shapes.isin(_US_SHAPES).to_numpy()
            plus4 = (count == 9)[:, None]
            hyphen = np.where(plus4, ord("-"), 0).astype(np.uint32)
            out = np.hstack([code[:, :5], hyphen, np.where(plus4, code[:, 5:9], 0)])
        elif country == "CA":
            ok = shapes.isin(_CA_SHAPES).to_numpy()
            letters = np.minimum(code[:, [0, 2, 4]], 127)
            ok = (
                ok
                & _CA_FIRST[letters[:, 0]]
                & _CA_LETTERS[letters[:, 1]]
                & _CA_LETTERS[letters[:, 2]]
            )
            out = np.hstack([code[:, :3], ch.constant(len(code), " "), code[:, 3:6]])
        else:
            gir = (ch.to_text(code[:, :6], count == 6, df.index) == "GIR0AA").to_numpy()
            ok = shapes.isin(_GB_SHAPES).to_numpy() | gir
            out = _space_before_last3(code, count)
        return df.assign(**{target: ch.to_text(out, ok, df.index)})

    return format_postal_fn


def _code_shape(code: ch.Matrix) -> ch.Matrix:
    """``9`` for digits, ``A`` for letters, ``?`` for anything else, padding kept."""
    shape = np.where(ch.is_letter(code), ord("A"), ord("?"))
    shape = np.where(ch.is_digit(code), ord("9"), shape)
    return np.where(code == 0, 0, shape).astype(np.uint32)


def _space_before_last3(code: ch.Matrix, count: ch.Ints) -> ch.Matrix:
    columns = np.arange(code.shape[1] + 1)
    split = (count - 3)[:, None]
    source = np.clip(np.where(columns < split, columns, columns - 1), 0, code.shape[1] - 1)
    out = np.take_along_axis(code, source, axis=1)
    out = np.where(columns == split, ord(" "), out)
    return np.where(columns <= count[:, None], out, 0).astype(np.uint32)


def _digits_text(values: pd.Series[Any]) -> pd.Series[Any]:
    """Text of ``values``; whole numbers in numeric columns without a trailing ``.0``."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(pd.NA, index=values.index, dtype="string")
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = pd.to_numeric(values, errors="coerce")
        whole = numbers.where(numbers.notna() & (numbers % 1 == 0) & (numbers.abs() < 1e15))
        return as_text(whole.astype("Int64"))
    return as_text(values)
