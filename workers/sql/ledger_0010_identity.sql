-- Ferry ledger, version 10: the ledger's identity.
-- Run ids start at 1 in every ledger, so whatever Ferry keeps outside the database (Redis
-- keys, Celery task ids, the queue) is named by this id as well: two databases sharing one
-- Redis (two services, staging beside production, a database dropped and created again)
-- never read each other's counters, throttle debts or tasks.
-- Made once, by the `ferry init` that applies this version; kept on every later upgrade.
-- born_system / born_database: the cluster (ferry.system_identifier() below) and the
-- database (its oid) the identity was made in. A copy of the ledger elsewhere (a restored
-- dump, pg_upgrade, a clone beside the original) carries the same id, but another
-- birthplace: Ferry refuses to use it until `ferry init` gives the copy an identity of its
-- own (workers.identity). A physical standby promoted in place keeps both: the same ledger.
-- The cluster's system identifier, or 0 where the server cannot read its pg_control (seen on
-- a sandboxed server; then the database's oid alone tells a copy apart).
CREATE FUNCTION ferry.system_identifier() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT system_identifier FROM pg_control_system());
EXCEPTION WHEN OTHERS THEN
    RETURN 0;
END
$$;

CREATE TABLE ferry.identity (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    id            text NOT NULL CHECK (id ~ '^[0-9a-f]{12}$'),
    born_system   bigint NOT NULL,
    born_database oid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    previous      text[] NOT NULL DEFAULT '{}'
);

INSERT INTO ferry.identity (id, born_system, born_database)
SELECT substr(md5(gen_random_uuid()::text || clock_timestamp()::text), 1, 12),
       ferry.system_identifier(),
       (SELECT oid FROM pg_database WHERE datname = current_database());

-- Runs launched before this version went to the one shared queue "ferry"; workers now
-- consume their ledger's own queue by default: such runs follow the ledger's queue.
UPDATE ferry.runs SET params = params - 'queue' WHERE params->>'queue' = 'ferry';
