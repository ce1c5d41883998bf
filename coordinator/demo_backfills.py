"""The demo's three backfills over ``patients``, built from the ``transforms`` library.

Each names its steps from the library with parameters (``transform=[(name, params),
...]``) rather than giving code: the steps are stored in the run as data, so the
workers rebuild them from the ledger, and the run's fingerprint covers the
parameters. Each pipeline ends in ``select_output`` (the frame the engine stages);
validation rules quarantine what the transform parsed but a human must look at.
"""

from __future__ import annotations

from migrations import Backfill, ValidationRule

TABLE = "patients"
KEY = "id"
CHUNK_SIZE = 10_000

# 1. birth dates typed by hand in many formats (US month-first) -> a real ``date``.
birth_dates = Backfill(
    table=TABLE,
    key=KEY,
    reads=["birth_date_text"],
    writes=["birth_date"],
    transform=[
        ("standardize_dates", {"src": "birth_date_text", "dst": "birth_date", "dayfirst": False}),
        ("select_output", {"key": KEY, "writes": ["birth_date"]}),
    ],
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
    transform=[
        (
            "convert_units",
            {
                "src": "weight_text",
                "dst": "weight_kg",
                "unit_from": "lb",
                "unit_to": "kg",
                "decimals": 2,
            },
        ),
        ("select_output", {"key": KEY, "writes": ["weight_kg"]}),
    ],
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
    transform=[
        (
            "restructure_json",
            {
                "src": "contact_legacy",
                "dst": "contact",
                "rename": {"tel": "phone", "mail": "email"},
                "move": {"street": "address.street", "zip": "address.postal"},
                "defaults": {"address.country": "US", "schema": 2},
            },
        ),
        ("select_output", {"key": KEY, "writes": ["contact"]}),
    ],
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
