"""The demo's synthetic ``patients``: realistic, messy, generated inside PostgreSQL.

Why in SQL: a million rows come from one ``INSERT ... SELECT generate_series``
in seconds, with no row crossing the network. Every value is derived from the
row number, so two demos of the same size hold the same data and the same
number of rows is quarantined. The names only look like PHI: they are drawn
from short lists of common first and last names.

The mess, per legacy column:

- ``birth_date_text``: ISO, ``MM/DD/YYYY``, ``M/D/YYYY``, ``3 Feb 1990``,
  ``February 3rd, 1990``, ``19900203``, ``MM-DD-YYYY``, padded with spaces;
  about 1 % garbage: NULL, empty, ``unknown``, ``N/A``, impossible (``02/30``),
  in the future or before 1900 (the last two are quarantined by the range rule);
- ``weight_text``: pounds as ``154.3 lbs``, ``154.3 lb``, ``154lb``, ``154.3 pounds``...;
  about 4 % garbage: NULL, ``n/a``, ``refused``, another unit (``70 kg``), and
  implausible values (``9999 lb``, ``-5 lb``, ``0 lb``: quarantined);
- ``contact_legacy``: JSON text in the old shape ``{tel, mail, street, zip}``;
  about 2 % broken: invalid JSON, a list, NULL, and emails that are not
  addresses (quarantined by the custom rule).
"""

from __future__ import annotations

from psycopg import sql

from workers.db import connect as pinned_connect

FIRST = (
    "Olivia Liam Emma Noah Ava Elijah Sophia James Isabella Lucas Mia Mateo Amelia Ethan "
    "Harper Aiden Evelyn Mason Abigail Logan Ella Jackson Avery Levi"
)
LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White"
)
STREETS = "Main St|Oak Ave|Pine Rd|Maple Dr|Cedar Ln|Elm St|Washington Blvd|Lake View Ct"

CREATE = """
CREATE TABLE patients (
  id uuid PRIMARY KEY,
  mrn text NOT NULL,
  first_name text NOT NULL,
  last_name text NOT NULL,
  birth_date_text text,
  weight_text text,
  contact_legacy text,
  updated_at timestamptz NOT NULL DEFAULT now()
)"""

INSERT = """
INSERT INTO patients (id, mrn, first_name, last_name, birth_date_text, weight_text,
                      contact_legacy)
SELECT md5('ferry-demo:' || g)::uuid,
  'MRN-' || lpad(g::text, 8, '0'),
  f, l,
  CASE WHEN g % 10 <> 9 THEN
    CASE g % 9
      WHEN 0 THEN to_char(d, 'YYYY-MM-DD') WHEN 1 THEN to_char(d, 'YYYY-MM-DD')
      WHEN 2 THEN to_char(d, 'MM/DD/YYYY') WHEN 3 THEN to_char(d, 'FMMM/FMDD/YYYY')
      WHEN 4 THEN to_char(d, 'FMDD Mon YYYY') WHEN 5 THEN to_char(d, 'FMMonth FMDDth, YYYY')
      WHEN 6 THEN to_char(d, 'YYYYMMDD') WHEN 7 THEN '  ' || to_char(d, 'YYYY-MM-DD') || ' '
      ELSE to_char(d, 'MM-DD-YYYY') END
  ELSE
    CASE (g / 10) % 20
      WHEN 0 THEN NULL WHEN 1 THEN 'unknown' WHEN 2 THEN '' WHEN 3 THEN '02/30/1985'
      WHEN 4 THEN to_char(d + 40000, 'YYYY-MM-DD')
      WHEN 5 THEN to_char(date '1850-01-01' + (g % 9000)::int, 'MM/DD/YYYY')
      WHEN 6 THEN 'N/A'
      ELSE to_char(d, 'YYYY-MM-DD') END
  END,
  CASE WHEN g % 25 <> 24 THEN
    CASE g % 6
      WHEN 0 THEN w || ' lbs' WHEN 1 THEN w || ' lb' WHEN 2 THEN w::text
      WHEN 3 THEN round(w) || 'lb' WHEN 4 THEN ' ' || w || ' LBS '
      ELSE to_char(w, 'FM990.0') || ' pounds' END
  ELSE
    CASE (g / 25) % 8
      WHEN 0 THEN NULL WHEN 1 THEN 'n/a' WHEN 2 THEN '70 kg' WHEN 3 THEN '9999 lb'
      WHEN 4 THEN '-5 lb' WHEN 5 THEN 'refused' WHEN 6 THEN '' ELSE '0 lb' END
  END,
  CASE WHEN g % 50 <> 49 THEN
    json_build_object('tel', phone, 'mail', lower(f || '.' || l) || (g % 997) || '@example.org',
                      'street', (1 + g % 9899) || ' ' || street,
                      'zip', lpad(((g * 37) % 99999)::text, 5, '0'))::text
  ELSE
    CASE (g / 50) % 5
      WHEN 0 THEN NULL WHEN 1 THEN '{{"tel": "555-' WHEN 2 THEN '[]'
      WHEN 3 THEN json_build_object('tel', phone, 'mail', 'none')::text
      ELSE json_build_object('tel', phone)::text END
  END
FROM generate_series(1::bigint, {rows}) AS g,
LATERAL (SELECT
  date '1925-01-01' + ((g * 7919) % 36000)::int AS d,
  round(90 + ((g * 104729) % 2100) / 10.0, 1) AS w,
  (string_to_array({first}, ' '))[1 + g % 24] AS f,
  (string_to_array({last}, ' '))[1 + (g * 31) % 24] AS l,
  (string_to_array({streets}, '|'))[1 + g % 8] AS street,
  CASE g % 3
    WHEN 0 THEN format('(%s) %s-%s', 200 + g % 800, 200 + (g / 7) % 800, lpad((g % 10000)::text, 4, '0'))
    WHEN 1 THEN format('%s.%s.%s', 200 + g % 800, 200 + (g / 7) % 800, lpad((g % 10000)::text, 4, '0'))
    ELSE format('+1 %s %s %s', 200 + g % 800, 200 + (g / 7) % 800, lpad((g % 10000)::text, 4, '0'))
  END AS phone) AS x
"""  # noqa: E501 - the phone formats read best one per line

EXPAND_MIGRATION = """\
-- Migration metadata
comment on migration '20240316_expand_patients' is
  'Expand patients with the typed columns the demo backfills fill';

-- Validation pre-conditions
do $$
begin
  if exists_column('patients', 'birth_date') then
    raise exception 'Column patients.birth_date already exists';
  end if;
end $$;

-- Forward migration
set lock_timeout = '5s';
alter table patients
  add column birth_date date,
  add column weight_kg numeric(6,2),
  add column contact jsonb;

-- Rollback script
-- alter table patients drop column contact, drop column weight_kg, drop column birth_date;
"""


def build_patients(url: str, rows: int) -> None:
    """Create and fill ``patients`` in the (fresh) demo database."""
    with pinned_connect(url, autocommit=True) as conn:
        conn.execute(CREATE)
        conn.execute(
            sql.SQL(INSERT).format(
                rows=sql.Literal(rows),
                first=sql.Literal(FIRST),
                last=sql.Literal(LAST),
                streets=sql.Literal(STREETS),
            )
        )
        conn.execute("VACUUM ANALYZE patients")
