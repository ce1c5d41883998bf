"""Backfill: convert every vital sign to SI units (pounds to kg, Fahrenheit to Celsius...).

`ferry schema up` launches this run, follows it, verifies it and only then completes the
version; `ferry schema down` rolls the run back (the pre-images of value_si and unit_si).
"""

from migrations import Backfill, ValidationRule

description = "Backfill: vital signs in SI units"

backfill = Backfill(
    table="vital_signs",
    key="id",
    reads=["value", "unit"],
    writes=["value_si", "unit_si"],
    sql={
        "value_si": (
            "CASE unit WHEN 'lb' THEN round(value * 0.45359237, 2)"
            " WHEN 'F' THEN round((value - 32) * 5 / 9, 1)"
            " WHEN 'in' THEN round(value * 2.54, 1) ELSE value END"
        ),
        "unit_si": (
            "CASE unit WHEN 'lb' THEN 'kg' WHEN 'F' THEN 'C' WHEN 'in' THEN 'cm' ELSE unit END"
        ),
    },
    rules=[
        ValidationRule(
            field="value_si",
            type="range",
            condition="0..1000",
            error_message="implausible vital sign",
            action="skip",
        )
    ],
    chunk_size=5_000,
)
