"""Masking of row values and secrets before they reach any sink.

Rows are patient records: a value may go to a log line, a Redis event, an
exception stored in the ledger or a span only as ``***``, or as ``***`` plus 8 hex
digits of HMAC-SHA-256 under the ledger's masking key, so equal values can be
correlated without being revealed. That keyed form is computed in the database
only (``ferry.mask()``, ledger version 15): the key never reaches Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# Quoted literals and "(col)=(value)" details are where PostgreSQL puts values.
_QUOTED = re.compile(r"\"(?:[^\"]|\"\")*\"|'(?:[^']|'')*'")
_DETAIL = re.compile(r"\)=\(.*?\)(?=[ ,.;]|$)")
_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


# A quoted word right after one of these names an object, a host or a role, not a row value:
# PostgreSQL's and libpq's catalog and connection messages put identifiers there.
_NAME_BEFORE = re.compile(
    r"(?:\b(?:relation|table|column|schema|database|role|user|index|sequence|function|"
    r"operator|type|constraint|extension|view|publication|tablespace|collation)\s+"
    r"|\bserver at\s+|\bport number:\s+|\boption\s+)$",
    re.IGNORECASE,
)
# SQLSTATE classes whose messages may quote a row value: data exceptions, integrity
# violations, the user's RAISE, internal errors. Their quotes are all masked.
VALUE_CLASSES = ("22", "23", "P0", "XX")


def mask_text(text: str, *, names: bool = False) -> str:
    """Mask every quoted literal, key detail and DSN password in a message.

    With ``names`` (a message from PostgreSQL or libpq whose SQLSTATE is not one of
    ``VALUE_CLASSES``), a quoted identifier that follows the word naming its kind
    (``relation "x"``, ``database "x"``, ``server at "h"``) stays readable: the user must be
    able to tell which table or host is wrong. A password never shows either way.
    """
    text = _DSN_PASSWORD.sub(r"\1***@", text)

    def masked(m: re.Match[str]) -> str:
        if names and _NAME_BEFORE.search(text, 0, m.start()):
            return m.group(0)
        return m.group(0)[0] + MASK + m.group(0)[0]

    text = _QUOTED.sub(masked, text)
    return _DETAIL.sub(")=(" + MASK + ")", text)


def names_are_safe(sqlstate: str | None) -> bool:
    """Whether a PostgreSQL message of this SQLSTATE quotes identifiers only, no row values
    (``None``: a client-side libpq/psycopg message, which never holds row data)."""
    return not (sqlstate or "").startswith(VALUE_CLASSES)


_DIGITS = re.compile(r"\S*\d\S*")


def mask_free_text(text: str) -> str:
    """Mask a message written by code that does not quote values (pandas, the user's own).

    ``unable to parse: 123-45-6789`` or ``Time data 1961/07/23 is not ...`` put a value
    unquoted into the text, so beyond ``mask_text``: whatever follows the first ``: `` (the
    conventional "what went wrong: the value" form) and every token holding a digit are
    masked. The exception's type and the sentence's words remain to say what happened.
    """
    text = mask_text(text)
    head, sep, tail = text.partition(": ")
    if sep and tail.strip():
        text = f"{head}: {MASK}"
    return _DIGITS.sub(MASK, text)


_WORD = re.compile(r"\w+")


def mask_words_of(text: str, values: Iterable[object]) -> str:
    """Mask every word of ``text`` that is a word of one of ``values`` (the rows a user's code
    was handed).

    A user's exception can quote a row value anywhere and in any form (``f"cannot normalise
    {ssn} for patient {name}"``): no pattern finds a name, but the rows themselves say what
    must not show. Words, not whole values, so that part of a value (a surname, one field of an
    address) is caught too; the message's own words, unless a row holds them, remain.
    """
    joined = "\n".join(str(v) for v in values if v is not None)
    # casefolded: a message that upper-cases a name ("JANE ROE") still shows it
    words = {w.casefold() for w in _WORD.findall(joined)}
    if not words:
        return text
    return _WORD.sub(lambda m: MASK if m.group(0).casefold() in words else m.group(0), text)
