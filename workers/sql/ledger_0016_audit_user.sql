-- Ferry ledger, version 16: every audit record carries the database role that wrote it.
--
-- The actor (FERRY_ACTOR) is what the client declares; session_user is what PostgreSQL
-- authenticated. The chain trigger writes it into params before the row is hashed, over
-- anything the client put there, so it is covered by the chain and cannot be spoofed.

CREATE OR REPLACE FUNCTION ferry.audit_chain_insert() RETURNS trigger
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
    NEW.params := coalesce(NEW.params, '{}'::jsonb)
                  || jsonb_build_object('session_user', session_user::text);
    NEW.prev_hash := prev;
    NEW.row_hash := ferry.audit_row_hash(prev, NEW.id, NEW.at, NEW.actor, NEW.host,
                                         NEW.action, NEW.run_id, NEW.params);
    UPDATE ferry.audit_chain SET last_id = NEW.id, last_hash = NEW.row_hash WHERE id = 1;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION ferry.audit_chain_insert() FROM PUBLIC;
