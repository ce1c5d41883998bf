"""Masking of row values and secrets before they reach any sink.

Rows are patient records: a value may go to a log line, a Redis event, an
exception stored in the ledger or a span only as ``***`` plus a short keyed
hash, so equal values can be correlated without being revealed.
"""

from __future__ import annotations

import hashlib
import hmac
import re

MASK = "***"

# Quoted literals and "(col)=(value)" details are where PostgreSQL puts values.
_QUOTED = re.compile(r"\"(?:[^\"]|\"\")*\"|'(?:[^']|'')*'")
_DETAIL = re.compile(r"\)=\(.*?\)(?=[ ,.;]|$)")
_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def mask_value(value: object, key: bytes) -> str:
    """``***`` plus 8 hex digits of an HMAC of the value; NULL stays visible."""
    if value is None:
        return "NULL"
    digest = hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()
    return f"{MASK}{digest[:8]}"


def mask_text(text: str) -> str:
    """Mask every quoted literal, key detail and DSN password in a message."""
    text = _DSN_PASSWORD.sub(r"\1***@", text)
    text = _QUOTED.sub(lambda m: m.group(0)[0] + MASK + m.group(0)[0], text)
    return _DETAIL.sub(")=(" + MASK + ")", text)


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
