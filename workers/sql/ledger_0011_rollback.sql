-- Ferry ledger, version 11: a rollback that never loses the application's writes.
--
-- A run may end rollback_failed: some chunk's pre-images could not be put back (the table
-- was dropped, a column renamed, the retries ran out). Its chunks stay done (their writes
-- are still in the table) with the restore's error and attempts beside them.
ALTER TABLE ferry.runs DROP CONSTRAINT runs_status_check;
ALTER TABLE ferry.runs ADD CONSTRAINT runs_status_check CHECK (status IN (
    'planning', 'running', 'paused', 'completed', 'completed_with_errors',
    'failed', 'cancelled', 'rolling_back', 'rolled_back', 'rollback_failed'));

ALTER TABLE ferry.chunks
    ADD COLUMN restore_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN restore_error    text,
    ADD COLUMN rows_restored    bigint,
    ADD COLUMN rows_kept        bigint,   -- changed by the application since: left as they are
    ADD COLUMN rows_gone        bigint,   -- deleted by the application since: not re-inserted
    ADD COLUMN rows_overwritten bigint;   -- changed since, restored anyway (rollback --force)

-- One row per row a restore found changed (or deleted) by the application since its chunk
-- wrote it. row_key is masked ('***' + keyed hash) when the key column is PHI; no value is
-- kept, only the names of the written columns that differ.
CREATE TABLE ferry.rollback_conflicts (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES ferry.runs (id) ON DELETE CASCADE,
    chunk_no    integer NOT NULL,
    row_key     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('changed', 'deleted')),
    columns     text[] NOT NULL,
    overwritten boolean NOT NULL DEFAULT false,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX rollback_conflicts_run ON ferry.rollback_conflicts (run_id, chunk_no);

-- When a chunk's restore failed for good (no retry can fix its error, or they ran out).
ALTER TABLE ferry.chunks ADD COLUMN restore_failed_at timestamptz;
