-- Ferry ledger, version 1: runs, chunks, backups, quarantine, audit, meta.
-- Times are clock_timestamp(): real instants, not the transaction's start.

CREATE TABLE ferry.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE ferry.runs (
    id           bigserial PRIMARY KEY,
    backfill     text NOT NULL,
    status       text NOT NULL CHECK (status IN (
                     'planning', 'running', 'paused', 'completed', 'completed_with_errors',
                     'failed', 'cancelled', 'rolling_back', 'rolled_back')),
    spec         jsonb NOT NULL,
    params       jsonb NOT NULL DEFAULT '{}'::jsonb,
    total_chunks integer,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at   timestamptz,
    finished_at  timestamptz,
    error        text
);

CREATE TABLE ferry.chunks (
    run_id           bigint NOT NULL REFERENCES ferry.runs (id) ON DELETE CASCADE,
    chunk_no         integer NOT NULL,
    lo               text,
    hi               text,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN (
                         'pending', 'running', 'done', 'failed', 'rolled_back')),
    attempts         integer NOT NULL DEFAULT 0,
    rows_read        bigint,
    rows_written     bigint,
    rows_quarantined bigint,
    rows_warned      bigint,
    rows_fixed       bigint,
    started_at       timestamptz,
    finished_at      timestamptz,
    duration_ms      double precision,
    worker           text,
    lease_expires_at timestamptz,
    error            text,
    PRIMARY KEY (run_id, chunk_no)
);
CREATE INDEX chunks_active ON ferry.chunks (run_id, status) WHERE status IN ('pending', 'running');

-- One row per run whose pre-images live in ferry.backup_<run id> (native column types,
-- so a restore is byte-identical).
CREATE TABLE ferry.backups (
    run_id     bigint PRIMARY KEY REFERENCES ferry.runs (id) ON DELETE CASCADE,
    table_name text NOT NULL,
    columns    text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    purged_at  timestamptz
);

CREATE TABLE ferry.quarantine (
    id           bigserial PRIMARY KEY,
    run_id       bigint NOT NULL REFERENCES ferry.runs (id) ON DELETE CASCADE,
    chunk_no     integer NOT NULL,
    row_key      text NOT NULL,
    rule_index   integer NOT NULL,
    field        text NOT NULL,
    rule_type    text NOT NULL,
    message      text NOT NULL,
    value_masked text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX quarantine_run ON ferry.quarantine (run_id, chunk_no);

CREATE TABLE ferry.audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,
    host       text NOT NULL,
    action     text NOT NULL,
    run_id     bigint,
    params     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_run ON ferry.audit_log (run_id);
