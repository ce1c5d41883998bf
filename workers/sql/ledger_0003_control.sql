-- Ferry ledger, version 3: runtime control (cancel) and alerts raised by workers.

ALTER TABLE ferry.chunks DROP CONSTRAINT chunks_status_check;
ALTER TABLE ferry.chunks ADD CONSTRAINT chunks_status_check CHECK (status IN (
    'pending', 'running', 'done', 'failed', 'rolled_back', 'cancelled'));

CREATE TABLE ferry.alerts (
    id      bigserial PRIMARY KEY,
    run_id  bigint NOT NULL REFERENCES ferry.runs (id) ON DELETE CASCADE,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    type    text NOT NULL,
    message text NOT NULL
);
CREATE INDEX alerts_run ON ferry.alerts (run_id, at);
