"""What the transforms package costs per 100k rows, against a naive per-row Python version.

    python bench/transforms.py [--rows 100000] [--baseline-rows 20000]

Builds a synthetic messy patients chunk (seeded numpy RNG: mixed date formats, weights as
text with units and garbage, untidy names, phones, ZIP codes, JSON documents, codes,
duplicates by e-mail, NULLs everywhere) and, for each transform, times the package's
vectorized function and a naive per-row Python implementation of the same job (a plain loop
over the values, the fastest naive form: no DataFrame.apply overhead). Each figure is the
median of 3 runs (time.perf_counter), in ms per 100k rows. The naive version runs on
``--baseline-rows`` rows and is scaled; "agree" is the share of those rows on which both
give the same answer. Needs only pandas and numpy; no database.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
import unicodedata
from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# This file is named transforms.py: keep its folder off the path so the package is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import transforms as tf  # noqa: E402
from transforms.dates import _ISO, _MONTH_FIRST, _OTHER  # noqa: E402

RUNS = 3
PER = 100_000
Naive = Callable[[pd.DataFrame], list[Any]]


def messy(rows: int, seed: int = 42) -> pd.DataFrame:
    """A chunk of patients as a legacy system would have them."""
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 365 * 80, rows)
    dates = pd.Timestamp("1930-01-01") + pd.to_timedelta(days, unit="D")
    styles = rng.choice(9, rows, p=[0.4, 0.15, 0.08, 0.08, 0.07, 0.07, 0.05, 0.05, 0.05])
    dob = np.select(
        [styles == i for i in range(8)],
        [
            dates.strftime("%Y-%m-%d"),
            dates.strftime("%m/%d/%Y"),
            dates.strftime("%d %b %Y"),
            dates.strftime("%B %d, %Y"),
            dates.strftime("%Y%m%d"),
            dates.strftime("%Y-%m-%dT%H:%M:%S+02:00"),
            dates.strftime("%Y/%m/%d"),
            np.array(["unknown", "31/02/1990", "n/a", ""])[rng.integers(0, 4, rows)],
        ],
        default="",
    ).astype(object)
    dob[styles == 8] = None
    pounds = rng.normal(170, 40, rows).round(1)
    weight = np.select(
        [styles % 4 == 0, styles % 4 == 1, styles % 4 == 2],
        [
            np.char.add(pounds.astype(str), " lbs"),
            pounds.astype(str),
            np.array([f" {p * 10:,.1f} " for p in pounds.tolist()]),
        ],
        default="??",
    ).astype(object)
    weight[rng.random(rows) < 0.05] = None
    first = np.array(["ann", "BO", " Cy", "d\u00e9sir\u00e9e", "Ed  ", "fay\t", "Gus", "  hal"])
    last = np.array(["lee", "SMITH", "  o'neil", "garc\u0131a", "Ng", "du  pont"])
    gaps = rng.choice(np.array([" ", "  ", "\t", " \u00a0"]), rows, p=[0.7, 0.15, 0.05, 0.1])
    names = np.char.add(
        np.char.add(first[rng.integers(0, 8, rows)], gaps), last[rng.integers(0, 6, rows)]
    )
    area = rng.integers(200, 999, rows).astype(str)
    exch = rng.integers(200, 999, rows).astype(str)
    line = np.char.zfill(rng.integers(0, 9999, rows).astype(str), 4)
    phone_styles = rng.integers(0, 5, rows)
    phone = np.select(
        [phone_styles == 0, phone_styles == 1, phone_styles == 2, phone_styles == 3],
        [
            np.char.add(
                np.char.add(np.char.add("(", area), ") "), np.char.add(np.char.add(exch, "-"), line)
            ),
            np.char.add(np.char.add(np.char.add(area, "."), np.char.add(exch, ".")), line),
            np.char.add(
                "+1 ",
                np.char.add(np.char.add(area, " "), np.char.add(np.char.add(exch, " "), line)),
            ),
            np.char.add(area, np.char.add(exch, line)),
        ],
        default="12345",
    ).astype(object)
    zips = np.char.zfill(rng.integers(0, 99999, rows).astype(str), 5)
    plus4 = np.char.zfill(rng.integers(0, 9999, rows).astype(str), 4)
    zip_text = np.where(
        rng.random(rows) < 0.3, np.char.add(np.char.add(zips, "-"), plus4), zips
    ).astype(object)
    zip_text[rng.random(rows) < 0.05] = "ABCDE"
    docs = [
        json.dumps({"tel": str(p), "name": str(n), "contact": {"email": f"p{i}@x.org"}, "old": 1})
        for i, (p, n) in enumerate(zip(phone[:rows].tolist(), names[:rows].tolist(), strict=True))
    ]
    docs_array = np.array(docs, dtype=object)
    docs_array[rng.random(rows) < 0.03] = "{not json"
    sex = rng.choice(np.array(["M", "F", "U", "X", None], dtype=object), rows)
    emails = np.char.add(
        np.char.add("p", rng.integers(0, rows // 3 + 1, rows).astype(str)), "@x.org"
    )
    email = np.where(rng.random(rows) < 0.3, np.char.upper(emails), emails).astype(object)
    return pd.DataFrame(
        {
            "id": np.arange(1, rows + 1),
            "dob_text": dob,
            "weight_lb": weight,
            "name": names.astype(object),
            "phone": phone,
            "zip": zip_text,
            "doc": docs_array,
            "sex": sex,
            "weight_kg": rng.normal(75, 15, rows).round(1),
            "weight_txt": np.where(rng.random(rows) < 0.05, None, pounds.astype(str)).astype(
                object
            ),
            "height_cm": np.where(rng.random(rows) < 0.02, 0.0, rng.normal(170, 10, rows).round(0)),
            "dob_v2": np.where(rng.random(rows) < 0.5, None, dob).astype(object),
            "email": email,
            "created": pd.Timestamp("2010-01-01")
            + pd.to_timedelta(rng.integers(0, 5000, rows), unit="D"),
        }
    )


# --- naive per-row versions ----------------------------------------------------------------

_OFFSET = re.compile(
    r"^(.*?[0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)\s*(Z|[+-][0-9]{2}:?[0-9]{2})$", re.I
)


def naive_dates(df: pd.DataFrame) -> list[Any]:
    out: list[Any] = []
    formats = _ISO + _OTHER + _MONTH_FIRST
    for value in df["dob_text"].tolist():
        if not isinstance(value, str) or not value.strip():
            out.append(None)
            continue
        text = re.sub(r"\s+", " ", value.replace(",", " ")).strip()
        text = re.sub(r"(?<=[0-9])(?:st|nd|rd|th)\b", "", text, flags=re.I)
        match = _OFFSET.match(text)
        if match:
            text = match.group(1)
        parsed = None
        for fmt in formats:
            try:
                parsed = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        out.append(parsed.strftime("%Y-%m-%d") if parsed else None)
    return out


_NUM = re.compile(
    r"^\s*([+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?)\s*([^0-9\s].*?)?\s*$"
)


def naive_kg(df: pd.DataFrame, column: str = "weight_lb") -> list[Any]:
    out: list[Any] = []
    for value in df[column].tolist():
        match = _NUM.match(value) if isinstance(value, str) else None
        if not match or (
            match.group(2) and match.group(2).lower() not in ("lb", "lbs", "pound", "pounds")
        ):
            out.append(np.nan)
            continue
        kg = Decimal(match.group(1).replace(",", "")) * Decimal("0.45359237")
        out.append(float(kg.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)))
    return out


def naive_round_text(df: pd.DataFrame) -> list[Any]:
    out: list[Any] = []
    for value in df["weight_kg"].tolist():
        out.append(
            None
            if value != value
            else str(Decimal(repr(value)).quantize(Decimal("0.1"), ROUND_HALF_UP))
        )
    return out


def naive_names(df: pd.DataFrame) -> list[Any]:
    out: list[Any] = []
    for value in df["name"].tolist():
        text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", value)).strip().title()
        out.append(text or None)
    return out


def naive_phone(df: pd.DataFrame) -> list[Any]:
    out: list[Any] = []
    for value in df["phone"].tolist():
        digits = re.sub(r"[^0-9]", "", value)
        match = re.match(r"^1?([2-9][0-9]{2})([2-9][0-9]{2})([0-9]{4})$", digits)
        out.append("+1" + "".join(match.groups()) if match else None)
    return out


def naive_zip(df: pd.DataFrame) -> list[Any]:
    out: list[Any] = []
    for value in df["zip"].tolist():
        match = re.match(r"^([0-9]{5})(?:-?([0-9]{4}))?$", re.sub(r"[\s-]+", "", value.upper()))
        out.append(
            None if not match else match.group(1) + (f"-{match.group(2)}" if match.group(2) else "")
        )
    return out


def naive_json(df: pd.DataFrame) -> list[Any]:
    out: list[Any] = []
    for value in df["doc"].tolist():
        try:
            doc = copy.deepcopy(json.loads(value))
        except ValueError:
            out.append(None)
            continue
        if "tel" in doc:
            doc.setdefault("contact", {})["phone"] = doc.pop("tel")
        doc.get("contact", {}).pop("email", None)
        doc.pop("old", None)
        doc.setdefault("v", 2)
        out.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
    return out


SEX = {"M": "male", "F": "female", "U": "unknown"}


def naive_lookup(df: pd.DataFrame) -> list[Any]:
    return [None if v is None or v != v else SEX.get(v, "other") for v in df["sex"].tolist()]


def naive_bmi(df: pd.DataFrame) -> list[Any]:
    out: list[Any] = []
    for weight, height in zip(df["weight_kg"].tolist(), df["height_cm"].tolist(), strict=True):
        h = height / 100
        out.append(np.nan if not h else weight / (h * h))
    return out


def naive_coalesce(df: pd.DataFrame) -> list[Any]:
    return [
        a if a is not None and a == a else (b if b is not None and b == b else None)
        for a, b in zip(df["dob_v2"].tolist(), df["dob_text"].tolist(), strict=True)
    ]


def naive_survivors(df: pd.DataFrame) -> list[Any]:
    best: dict[str, tuple[Any, int]] = {}
    rows = list(zip(df["id"].tolist(), df["email"].tolist(), df["created"].tolist(), strict=True))
    for key, email, created in rows:
        norm = " ".join(email.split()).casefold()
        if norm not in best or (created, key) < best[norm]:
            best[norm] = (created, key)
    return [best[" ".join(e.split()).casefold()][1] for _, e, _ in rows]


# --- the package's versions ----------------------------------------------------------------


Case = tuple[str, Callable[[pd.DataFrame], pd.DataFrame], str, Naive, str]


def cases() -> list[Case]:
    """(name, transform, output column, naive version, why the ratio is what it is)."""
    kg = tf.convert_units(
        "weight_lb", "kg", unit_from="lb", unit_to="kg", decimals=2, rounding="half_up"
    )
    reshape = tf.restructure_json(
        "doc", move={"tel": "contact.phone"}, drop=["contact.email", "old"], defaults={"v": 2}
    )
    survivors = tf.choose_survivors
    return [
        (
            "standardize_dates",
            tf.standardize_dates("dob_text", "dob"),
            "dob",
            naive_dates,
            "shapes routed to formats",
        ),
        ("convert_units lb->kg", kg, "kg", naive_kg, "C parse; regex for units"),
        (
            "  same, plain numbers",
            tf.convert_units(
                "weight_txt", "kg", unit_from="lb", unit_to="kg", decimals=2, rounding="half_up"
            ),
            "kg",
            lambda df: naive_kg(df, "weight_txt"),
            "all parsed in C",
        ),
        (
            "round_numeric as_text",
            tf.round_numeric("weight_kg", 1, dst="t", rounding="half_up", as_text=True),
            "t",
            naive_round_text,
            "numpy rounding",
        ),
        (
            "normalize_strings",
            tf.normalize_strings("name", case="title"),
            "name",
            naive_names,
            "per-string Unicode work",
        ),
        ("format_phone", tf.format_phone("phone", "p"), "p", naive_phone, "code-point matrix"),
        ("format_postal US", tf.format_postal("zip", "z"), "z", naive_zip, "code-point matrix"),
        ("restructure_json", reshape, "doc", naive_json, "json per row in both"),
        (
            "lookup",
            tf.lookup("sex", "s", SEX, default="other"),
            "s",
            naive_lookup,
            "one hash probe per row",
        ),
        (
            "computed (BMI)",
            tf.computed("bmi", lambda d: d.weight_kg / (d.height_cm / 100) ** 2),
            "bmi",
            naive_bmi,
            "one numpy expression",
        ),
        (
            "coalesce_history",
            tf.coalesce_history("dob", ["dob_v2", "dob_text"]),
            "dob",
            naive_coalesce,
            "one pass in both",
        ),
        (
            "choose_survivors",
            lambda df: survivors(df, ["email"], order_col="created"),
            "survivor_key",
            naive_survivors,
            "groupby + numpy",
        ),
    ]


def median_ms(fn: Callable[[pd.DataFrame], Any], df: pd.DataFrame) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn(df)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def agree(a: list[Any], b: list[Any]) -> float:
    def same(x: Any, y: Any) -> bool:
        if pd.isna(x) and pd.isna(y):
            return True
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) <= 1e-9 * max(1.0, abs(x))
        return bool(x == y)

    return 100.0 * sum(same(x, y) for x, y in zip(a, b, strict=True)) / max(1, len(a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=PER)
    parser.add_argument("--baseline-rows", type=int, default=20_000)
    args = parser.parse_args()
    rows = max(1, args.rows)
    base_rows = max(1, min(rows, args.baseline_rows))
    started = time.perf_counter()
    df = messy(rows)
    small = df.iloc[:base_rows].copy()
    print(f"ferry transforms on {rows:,} rows, naive per-row baseline on {base_rows:,} rows")
    print(f"(the naive one is slow); both reported as ms per 100k rows, median of {RUNS} runs\n")
    header = (
        f"{'transform':<24}{'ferry ms':>10}{'baseline ms':>13}{'speed-up':>10}{'agree':>9}  why"
    )
    print(header)
    print("-" * (len(header) + 24))
    for name, ours, column, naive, why in cases():
        ferry = median_ms(ours, df) * PER / rows
        baseline = median_ms(naive, small) * PER / base_rows
        share = agree(ours(small)[column].tolist(), naive(small))
        print(
            f"{name:<24}{ferry:>10.1f}{baseline:>13.1f}{baseline / ferry:>9.1f}x{share:>8.2f}%"
            f"  {why}"
        )
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
