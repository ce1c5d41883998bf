"""Statements that check a finished run against the table, for ``ferry verify``.

Like ``statements``, identifiers are quoted and values composed as literals.
"""

from __future__ import annotations

from psycopg import sql

from migrations.spec import ValidationRule
from workers.rules import passes
from workers.statements import KeyRange, Statements


class Checks:
    def __init__(self, statements: Statements) -> None:
        self.st = statements
        self.run_id = statements.run_id

    def _quarantined(self) -> sql.Composable:
        return sql.SQL(
            "t.{k}::text NOT IN (SELECT row_key FROM ferry.quarantine WHERE run_id = {r})"
        ).format(k=self.st.key, r=sql.Literal(self.run_id))

    def count_rows(self, whole: KeyRange) -> sql.Composed:
        return self.st.count_range(whole)

    def backup_rows(self) -> sql.Composed:
        return self.st.count_pre_images()

    def sample_keys(self, whole: KeyRange, percent: float, limit: int) -> sql.Composed:
        """Random keys of the run's rows, quarantined ones left out."""
        return sql.SQL(
            "SELECT t.{k}::text AS k FROM {t} AS t TABLESAMPLE BERNOULLI ({p}) "
            "WHERE {r} AND {q} LIMIT {n}"
        ).format(
            k=self.st.key,
            t=self.st.table,
            p=sql.Literal(min(100.0, max(percent, 0.0001))),
            r=self.st.in_range(whole),
            q=self._quarantined(),
            n=sql.Literal(int(limit)),
        )

    def recomputed_keys(self) -> sql.Composed:
        """Keys a verification dry run (chunk -1) would have changed: their pre-images."""
        return sql.SQL("SELECT b.{k}::text AS k FROM {b} AS b ORDER BY 1").format(
            k=self.st.key, b=self.st.pre_images(-1)
        )

    def checksum(self, keys: list[str]) -> sql.Composed:
        """Order-independent checksum of the written columns of some rows."""
        cols = sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in self.st.writes)
        return sql.SQL(
            "SELECT coalesce(bit_xor(hashtextextended(row(t.{k}, {cols})::text, 0)), 0) AS h, "
            "count(*) AS n FROM {t} AS t WHERE {keys}"
        ).format(k=self.st.key, cols=cols, t=self.st.table, keys=self.st.key_in(keys))

    def rule_violations(self, index: int, rule: ValidationRule, whole: KeyRange) -> sql.Composed:
        """Rows of the run (quarantined ones aside) whose current value breaks ``rule``."""
        test = passes(rule, sql.SQL("t.{}").format(sql.Identifier(rule.field)))
        return sql.SQL(
            "SELECT {i} AS rule, count(*) AS n FROM {t} AS t WHERE {r} AND {q} AND NOT {test}"
        ).format(
            i=sql.Literal(index),
            t=self.st.table,
            r=self.st.in_range(whole),
            q=self._quarantined(),
            test=test,
        )

    def drift_by_xmin(self, chunk_range: KeyRange, applied_xid: str) -> sql.Composed:
        """Rows of a chunk changed by a later transaction than the one that applied it."""
        return sql.SQL(
            "SELECT t.{k}::text AS k FROM {t} AS t WHERE {r} "
            "AND age(t.xmin) < age(xid(CAST({x} AS xid8)))"
        ).format(
            k=self.st.key,
            t=self.st.table,
            r=self.st.in_range(chunk_range),
            x=sql.Literal(applied_xid),
        )

    def drift_by_column(self, column: str, whole: KeyRange) -> sql.Composed:
        """Rows whose updated-at column is later than the end of the chunk that covered them.

        Candidates come from the column (indexable), then each is matched to its chunk.
        """
        st = self.st
        return sql.SQL(
            "SELECT t.{k}::text AS k FROM {t} AS t "
            "JOIN LATERAL (SELECT c.finished_at FROM ferry.chunks c "
            "  WHERE c.run_id = {r} AND c.status = 'done' "
            "    AND CAST(c.hi AS {kt}) >= t.{k} AND (c.lo IS NULL OR CAST(c.lo AS {kt}) < t.{k}) "
            "  LIMIT 1) AS ch ON true "
            "WHERE {range} AND t.{u} > (SELECT started_at FROM ferry.runs WHERE id = {r}) "
            "AND t.{u} > ch.finished_at"
        ).format(
            k=st.key,
            t=st.table,
            r=sql.Literal(self.run_id),
            kt=st.key_type,
            range=st.in_range(whole),
            u=sql.Identifier(column),
        )
