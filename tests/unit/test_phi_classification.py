"""PHI classification, free-text masking and the encryption key's checks (no services)."""

from __future__ import annotations

import base64

import pytest

from migrations.classification import check_columns, parse_setting, phi_columns
from migrations.errors import BadInput, SpecError
from migrations.masking import mask_free_text
from migrations.spec import Backfill
from workers.encryption import check_key, connect_options, fingerprint
from workers.settings import Settings


def test_backfill_phi_is_checked_and_stored() -> None:
    b = Backfill(table="t", key="id", writes=["x"], sql={"x": "1"}, phi=["name", "ssn"])
    assert b.phi == ("name", "ssn") and b.to_dict()["phi"] == ["name", "ssn"]
    with pytest.raises(SpecError, match="not one string"):
        check_columns("ssn")
    with pytest.raises(SpecError, match="twice"):
        check_columns(["ssn", "ssn"])
    with pytest.raises(BadInput, match="plain SQL identifier"):
        Backfill(table="t", key="id", writes=["x"], sql={"x": "1"}, phi=["ssn; drop"])


def test_project_setting_matches_columns_of_this_table_only() -> None:
    entries = parse_setting(" ssn, clinic.patients.dob ,patients.name,,other.mrn ")
    assert entries == ("ssn", "clinic.patients.dob", "patients.name", "other.mrn")
    found = phi_columns(
        ["note"],
        entries,
        schema="clinic",
        table="patients",
        columns=["id", "ssn", "dob", "name", "mrn", "note"],
    )
    assert found == ["dob", "name", "note", "ssn"]  # other.mrn names another table
    assert phi_columns([], entries, schema="x", table="patients", columns=["dob", "name"]) == [
        "name"
    ]
    for bad in ("a.b.c.d", "ssn;x", "bad name"):
        with pytest.raises(BadInput):
            parse_setting(bad)
    assert Settings.from_env({"FERRY_PHI_COLUMNS": "ssn,t.dob"}).phi_columns == ("ssn", "t.dob")


@pytest.mark.parametrize(
    ("message", "values"),
    [
        ("Unknown datetime string format, unable to parse: 123-45-6789, at position 0", ["123-45"]),
        ("Time data 1961/07/23 is not ISO8601 format.", ["1961"]),
        ("unable to parse: Zed Quackenbush", ["Zed", "Quackenbush"]),
        ("could not convert string to float: 'Jane Roe'", ["Jane"]),
    ],
)
def test_free_text_from_user_code_keeps_no_value(message: str, values: list[str]) -> None:
    masked = mask_free_text(message)
    assert "***" in masked
    for value in values:
        assert value not in masked
    assert masked.split()[0] == message.split()[0]  # the sentence still says what happened


def test_encryption_key_is_checked_and_never_shown() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    assert check_key(key) == key and check_key("") is None
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(BadInput, match="FERRY_ENCRYPTION_KEY") as err:
            check_key(bad)
        assert bad not in str(err.value)
    assert fingerprint(key) != fingerprint(key[::-1]) and key not in fingerprint(key)
    assert connect_options(None) == {} and connect_options(key)["options"].endswith(key)
    given = connect_options(key, "-c search_path=app")["options"]
    assert given == f"-c search_path=app -c ferry.encryption_key={key}"
    settings = Settings.from_env({"FERRY_ENCRYPTION_KEY": key})
    assert settings.encryption_key == key and key not in repr(settings)
