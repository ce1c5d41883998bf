-- Ferry ledger, version 5: a tamper-evident, append-only audit log.
--
-- Every audit row carries prev_hash (the row_hash of the row before it) and row_hash,
-- sha256 over prev_hash and the row's canonical content. One chain-head row, locked by
-- each insert until its transaction ends, serialises concurrent inserts so the chain
-- never forks; a rolled-back insert rolls the head back with it, so id gaps are harmless.
-- UPDATE, DELETE and TRUNCATE are refused by triggers, even for the ledger's owner:
-- changing history takes a superuser disabling the triggers, which `ferry audit verify`
-- then detects.

ALTER TABLE ferry.audit_log ADD COLUMN IF NOT EXISTS host text NOT NULL DEFAULT '';
ALTER TABLE ferry.audit_log ADD COLUMN prev_hash text;
ALTER TABLE ferry.audit_log ADD COLUMN row_hash text;

-- The canonical content of a row: a jsonb array (its text form is deterministic, strings
-- are escaped, params keys sorted by jsonb), the instant in UTC with microseconds.
CREATE FUNCTION ferry.audit_row_hash(
    prev text, id bigint, at timestamptz, actor text, host text, action text,
    run_id bigint, params jsonb
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
    SELECT encode(sha256(convert_to(jsonb_build_array(
        prev, id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        actor, host, action, run_id, params)::text, 'UTF8')), 'hex')
$$;

CREATE TABLE ferry.audit_chain (
    id        integer PRIMARY KEY CHECK (id = 1),
    last_id   bigint,
    last_hash text NOT NULL
);
REVOKE ALL ON ferry.audit_chain FROM PUBLIC;

-- Chain the rows written before this version, in id order.
DO $$
DECLARE
    r ferry.audit_log;
    h text := repeat('0', 64);
    last bigint;
BEGIN
    FOR r IN SELECT * FROM ferry.audit_log ORDER BY id LOOP
        UPDATE ferry.audit_log SET prev_hash = h,
            row_hash = ferry.audit_row_hash(h, r.id, r.at, r.actor, r.host, r.action,
                                            r.run_id, r.params)
        WHERE id = r.id RETURNING row_hash INTO h;
        last := r.id;
    END LOOP;
    INSERT INTO ferry.audit_chain (id, last_id, last_hash) VALUES (1, last, h);
END
$$;

ALTER TABLE ferry.audit_log ALTER COLUMN prev_hash SET NOT NULL;
ALTER TABLE ferry.audit_log ALTER COLUMN row_hash SET NOT NULL;

-- SECURITY DEFINER: a role that may only INSERT into the audit log still moves the chain
-- head, which nobody but the ledger's owner can touch directly.
CREATE FUNCTION ferry.audit_chain_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $$
DECLARE
    prev text;
BEGIN
    SELECT last_hash INTO prev FROM ferry.audit_chain WHERE id = 1 FOR UPDATE;
    -- Id and time are taken under the head's lock, so id order is chain order (the
    -- default id, drawn before the lock, is discarded: a gap, which is harmless).
    NEW.id := nextval('ferry.audit_log_id_seq');
    NEW.at := clock_timestamp();
    NEW.prev_hash := prev;
    NEW.row_hash := ferry.audit_row_hash(prev, NEW.id, NEW.at, NEW.actor, NEW.host,
                                         NEW.action, NEW.run_id, NEW.params);
    UPDATE ferry.audit_chain SET last_id = NEW.id, last_hash = NEW.row_hash WHERE id = 1;
    RETURN NEW;
END
$$;

CREATE FUNCTION ferry.audit_append_only() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'ferry.audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_chain BEFORE INSERT ON ferry.audit_log
    FOR EACH ROW EXECUTE FUNCTION ferry.audit_chain_insert();
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON ferry.audit_log
    FOR EACH ROW EXECUTE FUNCTION ferry.audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON ferry.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION ferry.audit_append_only();
-- The chain head moves only through the insert trigger.
CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON ferry.audit_chain
    FOR EACH ROW EXECUTE FUNCTION ferry.audit_append_only();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON ferry.audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION ferry.audit_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON ferry.audit_log FROM PUBLIC;
REVOKE ALL ON FUNCTION ferry.audit_chain_insert() FROM PUBLIC;
