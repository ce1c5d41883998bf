-- Ferry ledger, version 2: what verification, drift catch-up and error reports need.

-- The transaction id that applied a chunk: a row whose xmin is newer changed after it.
ALTER TABLE ferry.chunks ADD COLUMN applied_xid xid8;
-- Only these keys, when a chunk is re-run for its quarantined rows.
ALTER TABLE ferry.chunks ADD COLUMN retry_keys text[];
-- The plan's MigrationError: type, severity, description, impact, resolution, rollbackRequired.
ALTER TABLE ferry.chunks ADD COLUMN error_info jsonb;

-- Raw quarantined values, for `ferry quarantine --export --unmask` only. Nobody but the
-- ledger's owner (and roles granted SELECT, see `ferry init --roles`) can read them.
CREATE TABLE ferry.quarantine_values (
    quarantine_id bigint PRIMARY KEY REFERENCES ferry.quarantine (id) ON DELETE CASCADE,
    value         text
);
REVOKE ALL ON ferry.quarantine_values FROM PUBLIC;

CREATE TABLE ferry.verifications (
    id         bigserial PRIMARY KEY,
    run_id     bigint NOT NULL REFERENCES ferry.runs (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,
    ok         boolean NOT NULL,
    report     jsonb NOT NULL
);
