"""Hostile input: identifiers, --where filters, rule conditions, fixes, sql expressions.

Every user-supplied name or SQL fragment passes a validator before it reaches a
statement. Fed anything (random text, and text assembled from injection fragments),
a validator either accepts or raises the project's BadInput, nothing else; and what it
accepts, put where Ferry puts it (inside parentheses in a statement), is still exactly
one statement, with no comment that could swallow the rest and no side-effecting call.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pglast import parser

from coordinator.purge import parse_period
from migrations.errors import BadInput
from migrations.identifiers import QualifiedName, check_expression, check_name
from migrations.spec import Backfill, ValidationRule

FRAGMENTS = [
    "TRUE", "id", "dob", "1", "'a'", "=", " OR ", " AND ", "NOT ", "(", ")", ";", "--", "/*",
    "*/", "'", "''", "$$", "$x$", "\\", "E'\\''", "\n", "\x00", " ", ",", "::text",
    "DROP TABLE patients", "SELECT 1", "DELETE FROM t", "UNION SELECT 2", " FROM t", " AS y",
    " IN (SELECT 1)", " FOR UPDATE", "WITH d AS (DELETE FROM t RETURNING 1) SELECT 1",
    "pg_sleep(1)", "pg_catalog.pg_sleep(1)", "set_config('a','b',false)", "nextval('s')",
    "lo_import('/etc/passwd')", "query_to_xml('DROP TABLE t', true, true, '')", "now()",
    "length(name)", "x ~ E'\\\\d'", " IS NULL", "CASE WHEN x THEN 1 ELSE 2 END", "%s", "{}",
]  # fmt: skip
SIDE_EFFECT_NAMES = {
    "pg_sleep", "set_config", "nextval", "setval", "lo_import", "query_to_xml",
    "pg_terminate_backend", "pg_advisory_lock", "dblink_exec", "pg_read_file",
}  # fmt: skip

hostile = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12).map("".join),
)


def _functions(tree: Any) -> set[str]:
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "FuncCall":
                    found.add(value["funcname"][-1]["String"]["sval"].lower())
                stack.append(value)
    return found


def _assert_one_statement(text: str) -> None:
    """As check_where and statements.py compose it: one SELECT, nothing smuggled."""
    composed = f"SELECT 1 FROM t AS t WHERE FALSE AND ({text})"
    tree = json.loads(parser.parse_sql_json(composed))
    assert len(tree["stmts"]) == 1
    assert "SelectStmt" in tree["stmts"][0]["stmt"]
    names = {t.name for t in parser.scan(composed)}
    assert not names & {"SQL_COMMENT", "C_COMMENT", "ASCII_59"}
    assert not _functions(tree) & SIDE_EFFECT_NAMES
    for word in ("DeleteStmt", "InsertStmt", "UpdateStmt", "LockingClause"):
        assert word not in parser.parse_sql_json(composed)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile)
@example("TRUE); DROP TABLE patients; SELECT (1")
@example("TRUE) OR (pg_sleep(10) IS NULL")
@example("TRUE --")
@example("TRUE\x00; DROP TABLE patients")
def test_expressions_are_one_statement_or_bad_input(text: str) -> None:
    try:
        check_expression(text, "--where filter")
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    _assert_one_statement(text)


@settings(max_examples=300, deadline=None)
@given(hostile, hostile)
def test_rule_condition_and_fix_only_raise_bad_input(condition: str, fix: str) -> None:
    for kind in ("custom", "format", "range", "reference"):
        try:
            rule = ValidationRule(
                field="dob", type=kind, condition=condition, action="transform", fix=fix
            )
        except BadInput:
            continue
        assert rule.fix is not None
        _assert_one_statement(rule.fix)
        if kind == "custom":
            _assert_one_statement(rule.condition)


@settings(max_examples=300, deadline=None)
@given(hostile, hostile)
def test_backfill_where_and_sql_only_raise_bad_input(where: str, expression: str) -> None:
    try:
        Backfill(table="t", key="id", writes=["x"], sql={"x": expression}, where=where)
    except BadInput:
        return
    _assert_one_statement(where)
    tree = parser.parse_sql_json(f"UPDATE t SET x = ({expression})")
    assert tree.count('"stmt"') == 1


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=70), st.from_regex(r"[A-Za-z_][\w$.]{0,70}", fullmatch=True)))
def test_identifiers_are_plain_or_bad_input(text: str) -> None:
    try:
        name = check_name(text)
    except BadInput:
        pass
    else:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", name)
    try:
        qualified = QualifiedName.parse(text)
    except BadInput:
        return
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", p) for p in qualified.parts)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
@example("30d")
@example("30 days")
@example("-1d")
def test_retention_period_parses_or_is_bad_input(text: str) -> None:
    try:
        period = parse_period(text)
    except BadInput:
        return
    assert period >= timedelta(0)
    assert re.fullmatch(r"\s*\d+\s*[smhdw]\s*", text)


@pytest.mark.parametrize(
    "attack",
    [
        "TRUE); DROP TABLE patients; SELECT (1",
        "1=1; DROP TABLE patients",
        "TRUE;",
        "TRUE -- the closing parenthesis is gone",
        "TRUE /* */",
        "TRUE) OR (TRUE",
        "id FROM patients",
        "TRUE UNION SELECT 1",
        "TRUE AS x",
        "pg_sleep(5) IS NULL",
        "PG_CATALOG.PG_SLEEP(5) IS NULL",
        "set_config('statement_timeout', '0', false) IS NOT NULL",
        "nextval('patients_id_seq') > 0",
        "lo_import('/etc/passwd') > 0",
        "query_to_xml('DROP TABLE patients', true, true, '') IS NOT NULL",
        "id IN (SELECT id FROM patients FOR UPDATE)",
        "id IN (WITH d AS (DELETE FROM patients RETURNING id) SELECT id FROM d)",
        "'\\' = '; DROP TABLE patients; --'",
        "TRUE\x00; DROP TABLE patients",
    ],
)
def test_known_attacks_are_refused(attack: str) -> None:
    with pytest.raises(BadInput):
        check_expression(attack, "--where filter")
    with pytest.raises(BadInput):
        ValidationRule(field="dob", type="custom", condition=attack)


@pytest.mark.parametrize(
    "good",
    [
        "dob IS NULL",
        "b = 0 AND a > 1",
        "to_date(dob_text, 'YYYY-MM-DD') < CURRENT_DATE",
        "id IN (SELECT id FROM clinic.patients WHERE active)",
        "name ~ E'^\\\\d{3}-\\\\d{2}$'",
        "CASE WHEN weight > 500 THEN NULL ELSE weight END",
        "coalesce(length(name), 0) < 200 AND updated_at < now()",
        "'it''s' <> name",
    ],
)
def test_ordinary_filters_are_accepted(good: str) -> None:
    assert check_expression(good, "--where filter") == good
    assert ValidationRule(field="dob", type="custom", condition=good).condition == good


def test_transform_expressions_may_call_anything_but_stay_one_expression() -> None:
    slow = "(SELECT upper(name) FROM pg_sleep(0.01))"
    assert Backfill(table="t", key="id", writes=["x"], sql={"x": slow}).sql == {"x": slow}
    with pytest.raises(BadInput):
        Backfill(table="t", key="id", writes=["x"], sql={"x": "1) AS x FROM t; DROP TABLE t; --"})
