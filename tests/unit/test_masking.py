"""Masking of values, messages and DSNs (no services)."""

from __future__ import annotations

from migrations.errors import PermanentChunkError, TransientChunkError
from migrations.masking import mask_text, mask_value
from workers.failures import classify, describe


def test_mask_value_is_keyed_and_stable() -> None:
    a = mask_value("123-45-6789", b"k1")
    assert a.startswith("***") and "123" not in a
    assert a == mask_value("123-45-6789", b"k1") != mask_value("123-45-6789", b"k2")
    assert mask_value(None, b"k") == "NULL"


def test_mask_text_hides_literals_details_and_passwords() -> None:
    msg = 'invalid input syntax for type date: "Jane Roe 1961"'
    assert mask_text(msg) == 'invalid input syntax for type date: "***"'
    assert "O'Brien" not in mask_text("value 'O''Brien' is bad")
    detail = mask_text("Key (ssn)=(123-45-6789) already exists.")
    assert "123-45" not in detail and "(ssn)" in detail
    assert "hunter2" not in mask_text("postgresql://bob:hunter2@db:5432/x")


def test_user_exceptions_are_described_without_values() -> None:
    text = describe(ValueError("could not convert string to float: 'SSN 123-45-6789'"))
    assert text.startswith("ValueError:") and "123-45" not in text
    assert isinstance(classify(ValueError("x")), PermanentChunkError)
    err = TransientChunkError("lock", delay=2)
    assert classify(err) is err and err.delay == 2
