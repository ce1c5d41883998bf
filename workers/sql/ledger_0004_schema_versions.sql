-- Ferry ledger, version 4: versioned schema migrations (the plan's SchemaVersion).
--
-- One row per migration file version, rewritten as it moves through its states; the audit
-- log keeps the history. checksum is the file's sha256 when it was applied: an edited file
-- is refused until `ferry schema repair`. A version that declares a backfill stays in_progress
-- (applied_at set) until a run of that backfill is completed and verified; later versions (the
-- contract) wait for it.

CREATE TABLE ferry.schema_versions (
    version           bigint PRIMARY KEY,
    name              text NOT NULL,
    description       text NOT NULL DEFAULT '',
    category          text NOT NULL DEFAULT 'additive'
                      CHECK (category IN ('session', 'additive', 'transformative', 'destructive')),
    status            text NOT NULL CHECK (status IN (
                          'pending', 'in_progress', 'completed', 'failed', 'rolled_back')),
    checksum          text NOT NULL,
    applied_at        timestamptz,
    applied_by        text,
    rollback_point    text,
    non_transactional boolean NOT NULL DEFAULT false,
    error             text,
    backfill          text,    -- expand/contract: the Backfill reference this version waits on
    run_id            bigint,  -- the verified run that completed it
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Helpers that migration pre-conditions call (`if exists_table('x') then ...`). They live in
-- a schema of Ferry's own that the runner appends to search_path while a migration runs, so
-- nothing is ever created in the user's schemas. Names resolve through the caller's
-- search_path, exactly as the migration's own statements would.
CREATE SCHEMA ferry_helpers;
GRANT USAGE ON SCHEMA ferry_helpers TO PUBLIC;

CREATE FUNCTION ferry_helpers.exists_table(name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_class
                   WHERE oid = pg_catalog.to_regclass(name) AND relkind IN ('r', 'p', 'f'))
$$;

CREATE FUNCTION ferry_helpers.exists_view(name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_class
                   WHERE oid = pg_catalog.to_regclass(name) AND relkind IN ('v', 'm'))
$$;

CREATE FUNCTION ferry_helpers.exists_index(name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_class
                   WHERE oid = pg_catalog.to_regclass(name) AND relkind IN ('i', 'I'))
$$;

CREATE FUNCTION ferry_helpers.exists_column(table_name text, column_name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute
                   WHERE attrelid = pg_catalog.to_regclass(table_name)
                     AND attname = column_name AND attnum > 0 AND NOT attisdropped)
$$;

CREATE FUNCTION ferry_helpers.column_type(table_name text, column_name text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
    WHERE attrelid = pg_catalog.to_regclass(table_name)
      AND attname = column_name AND attnum > 0 AND NOT attisdropped
$$;

CREATE FUNCTION ferry_helpers.exists_constraint(table_name text, constraint_name text)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint
                   WHERE conrelid = pg_catalog.to_regclass(table_name)
                     AND conname = constraint_name)
$$;

CREATE FUNCTION ferry_helpers.exists_schema(name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = name)
$$;

CREATE FUNCTION ferry_helpers.exists_type(name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.to_regtype(name) IS NOT NULL
$$;
