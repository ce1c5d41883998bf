"""Short text as a matrix of code points, so codes can be handled with numpy array operations.

Why: without pyarrow, every pandas ``.str`` method calls a Python function per cell, so a
chain of them is slower than one hand-written loop. Phone numbers, postal codes and the
shape of a date are short: each value fits in one row of a ``uint32`` matrix (its UTF-32
code points, zero-padded), where classifying, filtering, upper-casing and re-assembling
characters are whole-column numpy operations. Values longer than the matrix width cannot
be a valid code; they are reported with length -1 and never match.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from transforms._common import as_text

Matrix = np.ndarray[Any, np.dtype[np.uint32]]
Mask = np.ndarray[Any, np.dtype[np.bool_]]
Ints = np.ndarray[Any, np.dtype[np.int64]]

NINE = ord("9")
LETTER = ord("a")
_SPACES = (9, 10, 11, 12, 13, 32, 0xA0, 0x2007, 0x202F)


def char_matrix(values: pd.Series[Any], width: int, *, min_width: int = 1) -> tuple[Matrix, Ints]:
    """Code points of each value (n x at most ``width``) and each length (-1: NULL, too long).

    The matrix is as wide as the longest value that fits (at least ``min_width``), so
    short codes stay cheap and callers can still index the columns they expect.
    """
    text = as_text(values)
    lengths = text.str.len().to_numpy(dtype="float64", na_value=np.nan)
    fits = lengths <= width  # NaN (NULL) compares False
    used = max(int(lengths[fits].max()) if fits.any() else 0, min_width, 1)
    flat = np.where(fits, text.to_numpy(dtype=object, na_value=""), "")
    cells = np.asarray(flat, dtype=f"<U{used}")
    matrix = cells.view(np.uint32).reshape(len(cells), used)
    return matrix, np.where(fits, lengths, -1).astype(np.int64)


def to_text(matrix: Matrix, valid: Mask, index: pd.Index[Any]) -> pd.Series[Any]:
    """Rows of ``matrix`` as ``str`` (trailing zeros dropped); None where not ``valid``."""
    if matrix.shape[1] == 0:
        matrix = np.zeros((len(matrix), 1), dtype=np.uint32)
    cells = np.ascontiguousarray(matrix).view(f"<U{matrix.shape[1]}").ravel()
    out = cells.astype(object)
    out[~valid] = None
    return pd.Series(out, index=index, dtype=object)


def is_digit(matrix: Matrix) -> Mask:
    return (matrix >= ord("0")) & (matrix <= NINE)


def is_letter(matrix: Matrix) -> Mask:
    """ASCII letters only: the codes handled here are written in ASCII."""
    upper = (matrix >= ord("A")) & (matrix <= ord("Z"))
    return upper | ((matrix >= ord("a")) & (matrix <= ord("z")))


def is_space(matrix: Matrix) -> Mask:
    return np.isin(matrix, _SPACES)


def upper(matrix: Matrix) -> Matrix:
    lower = (matrix >= ord("a")) & (matrix <= ord("z"))
    return np.where(lower, matrix - 32, matrix).astype(np.uint32)


def compact(matrix: Matrix, keep: Mask) -> tuple[Matrix, Ints]:
    """The kept characters of each row moved to its start, zero-padded; and their count."""
    rows, width = matrix.shape
    position = np.cumsum(keep, axis=1, dtype=np.int32) - 1
    position += (np.arange(rows, dtype=np.int32) * width)[:, None]
    out = np.zeros(rows * width, dtype=np.uint32)
    out[position[keep]] = matrix[keep]
    return out.reshape(rows, width), keep.sum(axis=1).astype(np.int64)


def shape(matrix: Matrix) -> Matrix:
    """Digits as ``9``, ASCII letters as ``a``, other characters (and padding) as they are."""
    out = np.where(is_letter(matrix), LETTER, matrix)
    return np.where(is_digit(matrix), NINE, out).astype(np.uint32)


def constant(rows: int, char: str) -> Matrix:
    """A one-column matrix holding ``char`` in every row."""
    return np.full((rows, 1), ord(char), dtype=np.uint32)
