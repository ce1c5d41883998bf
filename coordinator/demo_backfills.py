"""The demo's three backfills over ``patients``, built from the ``transforms`` library.

Why here: a worker resolves ``coordinator.demo_backfills:<name>`` like any user's
backfill module, so the demo exercises the same loading, fingerprinting and
pandas path as production. Each backfill is a pipeline of library factories
ending in ``select_output`` (the frame the engine stages), plus validation rules
that quarantine what the transform parsed but a human must look at.
"""

from __future__ import annotations

from migrations import Backfill, ValidationRule
from transforms import convert_units, pipeline, restructure_json, select_output, standardize_dates

TABLE = "patients"
KEY = "id"
CHUNK_SIZE = 10_000

# 1. birth dates typed by hand in many formats (US month-first) -> a real ``date``.
birth_dates = Backfill(
    table=TABLE,
    key=KEY,
    reads=["birth_date_text"],
    writes=["birth_date"],
    transform=pipeline(
        standardize_dates("birth_date_text", "birth_date", dayfirst=False),
        select_output(KEY, ["birth_date"]),
    ),
    rules=[
        ValidationRule(
            field="birth_date",
            type="range",
            condition="1900-01-01..today",
            error_message="implausible birth date",
            severity="error",
            action="skip",
        )
    ],
    chunk_size=CHUNK_SIZE,
)

# 2. weights as text in pounds ("154 lbs", "1,234.5", "n/a") -> kilograms, numeric(6,2).
weights_kg = Backfill(
    table=TABLE,
    key=KEY,
    reads=["weight_text"],
    writes=["weight_kg"],
    transform=pipeline(
        convert_units("weight_text", "weight_kg", unit_from="lb", unit_to="kg", decimals=2),
        select_output(KEY, ["weight_kg"]),
    ),
    rules=[
        ValidationRule(
            field="weight_kg",
            type="range",
            condition="0.5..400",
            error_message="implausible weight",
            severity="error",
            action="skip",
        )
    ],
    chunk_size=CHUNK_SIZE,
)

# 3. the legacy contact document {tel, mail, street, zip} -> {phone, email, address{...}}.
contacts = Backfill(
    table=TABLE,
    key=KEY,
    reads=["contact_legacy"],
    writes=["contact"],
    transform=pipeline(
        restructure_json(
            "contact_legacy",
            "contact",
            rename={"tel": "phone", "mail": "email"},
            move={"street": "address.street", "zip": "address.postal"},
            defaults={"address.country": "US", "schema": 2},
        ),
        select_output(KEY, ["contact"]),
    ),
    rules=[
        ValidationRule(
            field="contact",
            type="custom",
            condition="strpos(contact ->> 'email', '@') > 1",
            error_message="contact email is not an address",
            severity="error",
            action="skip",
        )
    ],
    chunk_size=CHUNK_SIZE,
)

BACKFILLS = {
    "birth_dates": "birth dates in mixed formats -> date",
    "weights_kg": "weight lb (text) -> kg numeric(6,2)",
    "contacts": "contact JSON restructured",
}
