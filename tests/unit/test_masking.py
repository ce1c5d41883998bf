"""Masking of values, messages and DSNs (no services)."""

from __future__ import annotations

from migrations.errors import PermanentChunkError, TransientChunkError
from migrations.masking import mask_text
from workers.failures import classify, describe


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


def test_names_stay_readable_only_where_they_are_names() -> None:
    from migrations.masking import names_are_safe

    missing = 'relation "clinic.patients" does not exist'
    assert mask_text(missing, names=True) == missing
    assert mask_text(missing) == 'relation "***" does not exist'  # the default is safe
    conn = 'connection to server at "db1", port 5432 failed: FATAL:  role "ferry" does not exist'
    assert mask_text(conn, names=True) == conn
    # a value in the same message is still masked: the word before it names no object
    mixed = 'column "dob" is of type date but "Jane Roe" is text'
    assert mask_text(mixed, names=True) == 'column "dob" is of type date but "***" is text'
    assert mask_text('invalid input syntax for type date: "Jane"', names=True).endswith('"***"')
    assert "s3cret" not in mask_text("postgresql://u:s3cret@h/db", names=True)
    assert names_are_safe("42P01") and names_are_safe("3D000") and names_are_safe(None)
    assert not any(names_are_safe(c) for c in ("22007", "23505", "P0001", "XX000"))


def test_a_users_message_loses_every_word_of_the_rows() -> None:
    from migrations.masking import mask_words_of

    rows = ["Jane Roe", "O'Brien-Smith", None, 12345.5, "123-45-6789"]
    text = "ValueError: cannot normalise 123-45-6789 for patient Jane Roe (O'Brien-Smith), 12345.5"
    assert mask_words_of(text, rows) == (
        "ValueError: cannot normalise ***-***-*** for patient *** *** (***'***-***), ***.***"
    )
    assert mask_words_of("nothing to hide", rows) == "nothing to hide"
    assert mask_words_of("no JANE or o'brien", rows) == "no *** or ***'***"
    assert mask_words_of("x", []) == "x"
