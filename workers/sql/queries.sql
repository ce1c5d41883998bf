-- Named ledger queries (procrastinate style): every fixed SQL statement Ferry runs on
-- its own tables lives here; statements over the user's table are built in statements.py.

-- name: insert_run
INSERT INTO ferry.runs (backfill, status, spec, params, created_by)
VALUES (%(backfill)s, 'planning', %(spec)s, %(params)s, %(actor)s)
RETURNING id;

-- name: start_run
-- walk_after and walk_to: NULL when every chunk is recorded already (ledger version 9).
UPDATE ferry.runs
   SET status = 'running', total_chunks = %(total)s, started_at = clock_timestamp(),
       walk_after = %(walk_after)s, walk_to = %(walk_to)s, walked_at = clock_timestamp()
 WHERE id = %(run_id)s;

-- name: walk_state
SELECT status, walk_after, walk_to FROM ferry.runs WHERE id = %(run_id)s;

-- name: lock_walk
-- Before a batch of the walk is recorded: the run (locked, so that a rollback or cancel and
-- the batch happen one after the other) and the number its next chunk takes.
SELECT r.status, r.walk_after, r.walk_to,
       (SELECT coalesce(max(c.chunk_no) + 1, 0) FROM ferry.chunks c WHERE c.run_id = r.id)
           AS next_no
  FROM ferry.runs r WHERE r.id = %(run_id)s FOR UPDATE OF r;

-- name: record_walk
UPDATE ferry.runs
   SET total_chunks = coalesce(total_chunks, 0) + %(added)s,
       walk_after = %(walk_after)s, walk_to = %(walk_to)s, walked_at = clock_timestamp()
 WHERE id = %(run_id)s;

-- name: abandoned_walks
-- Runs with chunks still to record and no batch recorded for a while: their launch is gone.
SELECT id FROM ferry.runs
 WHERE status IN ('running', 'paused') AND walk_to IS NOT NULL
   AND walked_at < clock_timestamp() - make_interval(secs => %(stall)s);

-- name: get_run
SELECT id, backfill, status, spec, params, total_chunks, created_by, created_at,
       started_at, finished_at, error,
       walk_to IS NOT NULL AND status IN ('running', 'paused') AS walking
  FROM ferry.runs WHERE id = %(run_id)s;

-- name: set_run_status
UPDATE ferry.runs SET status = %(status)s WHERE id = %(run_id)s AND status = ANY(%(from)s)
RETURNING id;

-- name: claim_chunk
-- Skip-free on purpose: a live transaction on this chunk holds its row lock, so we wait
-- (bounded by lock_timeout) and then see its outcome.
UPDATE ferry.chunks c
   SET status = 'running', attempts = c.attempts + 1, worker = %(worker)s,
       started_at = clock_timestamp(),
       lease_expires_at = clock_timestamp() + make_interval(secs => %(lease)s)
  FROM ferry.runs r
 WHERE c.run_id = %(run_id)s AND c.chunk_no = %(chunk_no)s AND r.id = c.run_id
   AND c.status IN ('pending', 'running') AND r.status = 'running'
RETURNING c.attempts, c.lo, c.hi, c.retry_keys, c.planned_rows, r.target_rows,
          r.params->'limits' AS limits, r.params->>'queue' AS queue;

-- name: lock_chunk
-- Only the chunk's row is locked: commands that change the run's status never wait behind
-- a stream of chunk transactions (row share locks would starve them). Those that must see
-- in-flight chunks settle (cancel, rollback) update the chunk rows, which waits for exactly
-- the transactions still holding them.
-- The range is read here, under the lock, not taken from the claim: a chunk may have been cut
-- (see split_chunk) between another delivery's claim and this transaction.
SELECT c.status, r.status AS run_status, c.lo, c.hi, c.retry_keys
  FROM ferry.chunks c JOIN ferry.runs r ON r.id = c.run_id
 WHERE c.run_id = %(run_id)s AND c.chunk_no = %(chunk_no)s
   FOR NO KEY UPDATE OF c;

-- name: lock_for_split
-- Splits of one run are serialised (they number new chunks from the run's highest); the lock
-- is held only for the split's own short transaction.
SELECT pg_advisory_xact_lock(hashtext('ferry.split'), %(run_id)s::integer) AS locked,
       c.status, c.lo, c.hi, c.retry_keys
  FROM ferry.chunks c JOIN ferry.runs r ON r.id = c.run_id
 WHERE c.run_id = %(run_id)s AND c.chunk_no = %(chunk_no)s AND r.status = 'running'
   FOR NO KEY UPDATE OF c;

-- name: split_chunk
-- Cut chunk (lo, hi] at mid: it keeps (lo, mid], a new pending chunk gets (mid, hi], held back
-- (sent_at NULL) until a chunk of the run settles and releases it.
WITH cut AS (
    UPDATE ferry.chunks
       SET hi = %(mid)s, planned_rows = %(keep)s
     WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s AND hi = %(hi)s
    RETURNING run_id
), born AS (
    INSERT INTO ferry.chunks (run_id, chunk_no, lo, hi, planned_rows, split_from)
    SELECT %(run_id)s, (SELECT max(chunk_no) + 1 FROM ferry.chunks WHERE run_id = %(run_id)s),
           %(mid)s, %(hi)s, %(rest)s, %(chunk_no)s
      FROM cut
    RETURNING chunk_no
), counted AS (
    UPDATE ferry.runs SET total_chunks = total_chunks + 1
     WHERE id = %(run_id)s AND EXISTS (SELECT 1 FROM born)
    RETURNING id
)
SELECT born.chunk_no FROM born, counted;

-- name: set_target_rows
-- Last writer wins: each worker's estimate is a smoothed measurement of the same run.
UPDATE ferry.runs SET target_rows = %(target)s
 WHERE id = %(run_id)s AND target_rows IS DISTINCT FROM %(target)s;

-- name: finish_chunk
-- A re-run of quarantined rows (rerun) adds to the chunk's counts instead of replacing them.
-- The same statement releases the run's next chunks (ledger version 8): no round trip more.
WITH finished AS (
UPDATE ferry.chunks
   SET status = 'done',
       rows_read = CASE WHEN %(rerun)s THEN rows_read ELSE %(rows_read)s END,
       rows_written = CASE WHEN %(rerun)s THEN rows_written + %(rows_written)s
                           ELSE %(rows_written)s END,
       rows_quarantined = CASE WHEN %(rerun)s
                               THEN rows_quarantined - %(cleared)s + %(rows_quarantined)s
                               ELSE %(rows_quarantined)s END,
       rows_warned = CASE WHEN %(rerun)s THEN rows_warned + %(rows_warned)s
                          ELSE %(rows_warned)s END,
       rows_fixed = CASE WHEN %(rerun)s THEN rows_fixed + %(rows_fixed)s
                         ELSE %(rows_fixed)s END,
       finished_at = clock_timestamp(), duration_ms = %(duration_ms)s, worker = %(worker)s,
       lease_expires_at = NULL, error = NULL, error_info = NULL, retry_keys = NULL,
       applied_xid = pg_current_xact_id(), restore_requested_at = NULL
 WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s
)
SELECT chunk_no FROM ferry.release_chunks(%(run_id)s, %(window)s, %(chunk_no)s) AS chunk_no;

-- name: release_chunks
-- The run's next chunks to send, marked sent (see ferry.release_chunks).
SELECT chunk_no FROM ferry.release_chunks(%(run_id)s, %(window)s, NULL) AS chunk_no;

-- name: hold_back_pending
-- Before a run's chunks are sent again from the ledger (resume, a stall, a retry): every
-- pending chunk counts as not sent, whatever became of its task.
UPDATE ferry.chunks SET sent_at = NULL
 WHERE run_id = %(run_id)s AND status = 'pending' AND sent_at IS NOT NULL;

-- name: clear_quarantine
DELETE FROM ferry.quarantine
 WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s AND row_key = ANY(%(keys)s);

-- name: release_chunk
UPDATE ferry.chunks
   SET status = 'pending', lease_expires_at = NULL, error = %(error)s,
       error_info = %(info)s
 WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s AND status = 'running';

-- name: fail_chunk
UPDATE ferry.chunks
   SET status = 'failed', lease_expires_at = NULL, error = %(error)s, error_info = %(info)s,
       finished_at = clock_timestamp()
 WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s AND status IN ('pending', 'running');

-- name: run_active
SELECT EXISTS (SELECT 1 FROM ferry.chunks
                WHERE run_id = %(run_id)s AND status IN ('pending', 'running')) AS active,
       status, walk_to IS NOT NULL AS walking
  FROM ferry.runs WHERE id = %(run_id)s;

-- name: stop_run
UPDATE ferry.runs SET status = 'failed', error = %(error)s, finished_at = clock_timestamp()
 WHERE id = %(run_id)s AND status = 'running';

-- name: stop_run_alerting
-- A run stopped by a worker (an error no retry can fix, the failure breaker): failed, with
-- the alert `ferry status` shows, raised once whichever of several failing workers stops it.
WITH stopped AS (
    UPDATE ferry.runs SET status = 'failed', error = %(error)s, finished_at = clock_timestamp()
     WHERE id = %(run_id)s AND status = 'running'
    RETURNING id
)
INSERT INTO ferry.alerts (run_id, type, message)
SELECT id, %(type)s, %(message)s FROM stopped
RETURNING run_id;

-- name: lock_run
SELECT status, walk_to IS NOT NULL AS walking FROM ferry.runs WHERE id = %(run_id)s FOR UPDATE;

-- name: chunk_tally
SELECT count(*) FILTER (WHERE status IN ('pending', 'running')) AS active,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'done') AS done,
       coalesce(sum(rows_quarantined), 0) AS quarantined
  FROM ferry.chunks WHERE run_id = %(run_id)s;

-- name: end_run
UPDATE ferry.runs SET status = %(status)s, finished_at = clock_timestamp()
 WHERE id = %(run_id)s;

-- name: requeue_expired
UPDATE ferry.chunks c
   SET status = 'pending', lease_expires_at = NULL, worker = NULL,
       error = 'lease expired: worker lost', sent_at = clock_timestamp()
 WHERE (c.run_id, c.chunk_no) IN (
        SELECT x.run_id, x.chunk_no
          FROM ferry.chunks x JOIN ferry.runs r ON r.id = x.run_id
         WHERE x.status = 'running' AND x.lease_expires_at < clock_timestamp()
           AND r.status = 'running'
           FOR UPDATE OF x SKIP LOCKED)
RETURNING c.run_id, c.chunk_no,
          (SELECT r.params->>'queue' FROM ferry.runs r WHERE r.id = c.run_id) AS queue;

-- name: chunk_settled
-- A chunk that is no longer pending or running (or does not exist) needs no work.
SELECT NOT EXISTS (
    SELECT 1 FROM ferry.chunks
     WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s AND status IN ('pending', 'running')
) AS settled;

-- name: pending_chunks
SELECT chunk_no FROM ferry.chunks
 WHERE run_id = %(run_id)s AND status = 'pending' ORDER BY chunk_no;

-- name: retry_failed
UPDATE ferry.chunks SET status = 'pending', attempts = 0, error = NULL, finished_at = NULL
 WHERE run_id = %(run_id)s AND status = 'failed'
RETURNING chunk_no;

-- name: status_counts
SELECT status, count(*) AS chunks, count(sent_at) AS sent,
       coalesce(sum(rows_read), 0) AS rows_read, coalesce(sum(rows_written), 0) AS rows_written,
       coalesce(sum(rows_quarantined), 0) AS rows_quarantined,
       coalesce(sum(rows_warned), 0) AS rows_warned
  FROM ferry.chunks WHERE run_id = %(run_id)s GROUP BY status;

-- name: chunk_durations
SELECT duration_ms FROM ferry.chunks
 WHERE run_id = %(run_id)s AND duration_ms IS NOT NULL ORDER BY duration_ms;

-- name: recent_chunk_errors
SELECT chunk_no, status, error, error_info, coalesce(finished_at, started_at) AS at
  FROM ferry.chunks
 WHERE run_id = %(run_id)s AND error IS NOT NULL
 ORDER BY coalesce(finished_at, started_at) DESC NULLS LAST LIMIT %(limit)s;

-- name: stalled_chunks
SELECT count(*) AS stalled FROM ferry.chunks
 WHERE run_id = %(run_id)s AND status = 'running' AND lease_expires_at < clock_timestamp();

-- name: rollback_order
SELECT chunk_no FROM ferry.chunks
 WHERE run_id = %(run_id)s AND status = 'done'
   AND (%(chunk_no)s::integer IS NULL OR chunk_no = %(chunk_no)s::integer)
 ORDER BY finished_at DESC, chunk_no DESC;

-- name: lock_chunk_for_restore
SELECT status, restore_requested_at IS NOT NULL AS requested FROM ferry.chunks
 WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s FOR NO KEY UPDATE;

-- name: mark_rolled_back
UPDATE ferry.chunks
   SET status = 'rolled_back', finished_at = clock_timestamp(), lease_expires_at = NULL,
       rows_restored = coalesce(rows_restored, 0) + %(rows)s, rows_kept = %(kept)s,
       rows_gone = %(gone)s, rows_overwritten = coalesce(rows_overwritten, 0) + %(overwritten)s,
       restore_error = NULL, restore_failed_at = NULL
 WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s;

-- name: cancel_pending_for_rollback
-- A chunk that never committed wrote nothing: rolled back as it is. One re-run for its
-- quarantined rows (retry_keys), pending, running or failed, holds the pre-images of its
-- first pass: it becomes done again, so the rollback restores it like every done chunk.
UPDATE ferry.chunks
   SET status = CASE WHEN retry_keys IS NULL THEN 'rolled_back' ELSE 'done' END,
       retry_keys = NULL, lease_expires_at = NULL
 WHERE run_id = %(run_id)s AND status IN ('pending', 'running', 'failed');

-- name: reopen_kept_chunks
-- ``ferry rollback --force`` of a rolled back run: its chunks that left rows to the
-- application are restored once more, those rows included.
UPDATE ferry.chunks SET status = 'done'
 WHERE run_id = %(run_id)s AND status = 'rolled_back' AND rows_kept > 0
   AND (%(chunk_no)s::integer IS NULL OR chunk_no = %(chunk_no)s::integer)
RETURNING chunk_no;

-- name: reset_restore_failures
-- A rollback started again (after rollback_failed) tries every chunk still to restore afresh.
-- It is also the rollback's request: only a chunk marked so is restored (ledger version 17).
UPDATE ferry.chunks SET restore_attempts = 0, restore_error = NULL, restore_failed_at = NULL,
       restore_requested_at = clock_timestamp()
 WHERE run_id = %(run_id)s AND status = 'done'
   AND (%(chunk_no)s::integer IS NULL OR chunk_no = %(chunk_no)s::integer);

-- name: restore_failed
-- One failed attempt at restoring a chunk; ``final``: no retry will follow (the error is one
-- no retry can fix, or the attempts ran out).
UPDATE ferry.chunks
   SET restore_attempts = restore_attempts + 1, restore_error = %(error)s,
       restore_failed_at = CASE WHEN %(final)s OR restore_attempts + 1 >= %(max_attempts)s
                                THEN clock_timestamp() END
 WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s AND status = 'done'
RETURNING restore_attempts, restore_failed_at IS NOT NULL AS final;

-- name: rollback_tally
SELECT count(*) FILTER (WHERE status IN ('pending', 'running')) AS active,
       count(*) FILTER (WHERE status = 'done' AND restore_failed_at IS NULL) AS to_restore,
       count(*) FILTER (WHERE status = 'done' AND restore_failed_at IS NOT NULL) AS failed
  FROM ferry.chunks WHERE run_id = %(run_id)s;

-- name: rollback_summary
SELECT count(*) FILTER (WHERE status = 'rolled_back' AND rows_restored IS NOT NULL) AS chunks,
       coalesce(sum(rows_restored), 0) AS restored, coalesce(sum(rows_kept), 0) AS kept,
       coalesce(sum(rows_gone), 0) AS gone, coalesce(sum(rows_overwritten), 0) AS overwritten,
       count(*) FILTER (WHERE status = 'done' AND restore_failed_at IS NOT NULL) AS failed,
       (array_agg(restore_error ORDER BY chunk_no)
          FILTER (WHERE restore_failed_at IS NOT NULL))[1] AS error
  FROM ferry.chunks
 WHERE run_id = %(run_id)s AND (%(chunk_no)s::integer IS NULL OR chunk_no = %(chunk_no)s::integer);

-- name: set_rollback_force
-- What ``ferry rollback --force`` asked, read by the workers that restore the run's chunks.
UPDATE ferry.runs
   SET params = params || jsonb_build_object('rollback_force', %(force)s::boolean,
                                             'rollback_by', %(actor)s::text)
 WHERE id = %(run_id)s;

-- name: chunk_overwrites
SELECT rows_overwritten FROM ferry.chunks
 WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s;

-- name: chunk_restore_state
SELECT status, restore_failed_at IS NOT NULL AS restore_failed
  FROM ferry.chunks WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s;

-- name: audit
INSERT INTO ferry.audit_log (actor, host, action, run_id, params)
VALUES (%(actor)s, %(host)s, %(action)s, %(run_id)s, %(params)s);

-- name: register_backup
INSERT INTO ferry.backups (run_id, table_name, columns)
VALUES (%(run_id)s, %(table_name)s, %(columns)s);

-- name: get_meta
SELECT value FROM ferry.meta WHERE key = %(key)s;

-- name: mask_values
SELECT ferry.mask(v) AS masked FROM unnest(%(values)s::text[]) WITH ORDINALITY AS u(v, n)
 ORDER BY n;

-- name: spec_digest
-- The stored spec's digest (jsonb's text is canonical), and the one its launch recorded in the
-- append-only, hash-chained audit log: a spec rewritten since launch no longer matches.
SELECT encode(sha256(convert_to(r.spec::text, 'UTF8')), 'hex') AS stored,
       (SELECT a.params->>'spec_sha256' FROM ferry.audit_log a
         WHERE a.run_id = r.id AND a.action = 'launch' ORDER BY a.id LIMIT 1) AS launched
  FROM ferry.runs r WHERE r.id = %(run_id)s;

-- name: put_meta
INSERT INTO ferry.meta (key, value) VALUES (%(key)s, %(value)s) ON CONFLICT (key) DO NOTHING;

-- name: get_identity
-- The ledger's identity, and whether this database is where it was made (see ledger_0010);
-- a system identifier of 0 (pg_control unreadable) leaves the database's oid to decide.
SELECT i.id,
       (i.born_system = s.id OR 0 IN (i.born_system, s.id))
       AND i.born_database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AS at_home
  FROM ferry.identity i, (SELECT ferry.system_identifier() AS id) s;

-- name: rekey_identity
-- A copy of a ledger gets an identity of its own; runs that followed the old default queue
-- follow the new one (their tasks went to the original's queue, not this database's).
WITH old AS (SELECT id FROM ferry.identity FOR UPDATE),
     moved AS (
       UPDATE ferry.identity i
          SET id = %(new)s,
              born_system = ferry.system_identifier(),
              born_database = (SELECT oid FROM pg_database WHERE datname = current_database()),
              created_at = clock_timestamp(),
              previous = i.previous || old.id
         FROM old
        RETURNING old.id AS old_id, i.id AS new_id),
     runs AS (
       UPDATE ferry.runs r SET params = r.params - 'queue'
         FROM moved
        WHERE r.params->>'queue' = 'ferry.' || moved.old_id)
SELECT old_id, new_id FROM moved;

-- name: later_overlapping_runs
SELECT id FROM ferry.runs
 WHERE id > %(run_id)s AND spec->>'schema' = %(schema)s AND spec->>'table' = %(table)s
   AND status NOT IN ('rolled_back', 'planning')
   AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(spec->'writes') w
                WHERE w = ANY(%(writes)s))
 ORDER BY id LIMIT 1;

-- name: get_chunk
SELECT status FROM ferry.chunks WHERE run_id = %(run_id)s AND chunk_no = %(chunk_no)s;

-- name: backup_bytes
SELECT coalesce(pg_total_relation_size(to_regclass('ferry.backup_' || %(run_id)s::bigint)), 0)
       AS bytes;

-- name: run_chunks
SELECT chunk_no, lo, hi, status, rows_read, rows_written, rows_quarantined,
       applied_xid::text AS applied_xid
  FROM ferry.chunks WHERE run_id = %(run_id)s ORDER BY chunk_no;

-- name: quarantine_count
SELECT count(*) AS n FROM ferry.quarantine WHERE run_id = %(run_id)s;

-- name: record_verification
INSERT INTO ferry.verifications (run_id, actor, ok, report)
VALUES (%(run_id)s, %(actor)s, %(ok)s, %(report)s);

-- name: requeue_quarantined
WITH q AS (SELECT chunk_no, array_agg(row_key ORDER BY id) AS keys
             FROM ferry.quarantine WHERE run_id = %(run_id)s GROUP BY chunk_no)
UPDATE ferry.chunks c
   SET status = 'pending', retry_keys = q.keys, attempts = 0, error = NULL, error_info = NULL
  FROM q
 WHERE c.run_id = %(run_id)s AND c.chunk_no = q.chunk_no AND c.status = 'done'
RETURNING c.chunk_no;

-- name: reopen_run
UPDATE ferry.runs SET status = 'running', finished_at = NULL, error = NULL
 WHERE id = %(run_id)s AND status = ANY(%(from)s)
RETURNING id;

-- name: quarantine_summary
SELECT rule_index, field, rule_type, message, count(*) AS rows,
       (array_agg(row_key || ' ' || coalesce(value_masked, 'NULL') ORDER BY id))[1:5]
           AS examples
  FROM ferry.quarantine WHERE run_id = %(run_id)s
 GROUP BY rule_index, field, rule_type, message ORDER BY rule_index;

-- name: quarantine_rows
SELECT q.chunk_no, q.row_key, q.field, q.rule_type, q.message, q.value_masked AS value
  FROM ferry.quarantine q WHERE q.run_id = %(run_id)s ORDER BY q.id;

-- name: quarantine_rows_unmasked
SELECT q.chunk_no, q.row_key, q.field, q.rule_type, q.message, v.value
  FROM ferry.quarantine q LEFT JOIN ferry.quarantine_values v ON v.quarantine_id = q.id
 WHERE q.run_id = %(run_id)s ORDER BY q.id;

-- name: can_unmask
SELECT has_table_privilege('ferry.quarantine_values', 'SELECT') AS ok;

-- name: stalled_runs
-- Running runs with work left, nothing in flight and no chunk activity for a while: their
-- queued tasks were lost (a Redis restart without persistence, a coordinator killed mid-dispatch).
SELECT r.id, r.params->>'queue' AS queue, r.params->'limits' AS limits
  FROM ferry.runs r
 WHERE r.status = 'running'
   AND r.started_at < clock_timestamp() - make_interval(secs => %(stall)s)
   AND EXISTS (SELECT 1 FROM ferry.chunks c WHERE c.run_id = r.id AND c.status = 'pending')
   AND NOT EXISTS (SELECT 1 FROM ferry.chunks c WHERE c.run_id = r.id AND c.status = 'running')
   AND NOT EXISTS (SELECT 1 FROM ferry.chunks c WHERE c.run_id = r.id
                     AND greatest(c.started_at, c.finished_at)
                         > clock_timestamp() - make_interval(secs => %(stall)s));

-- name: requeue_stalled_restores
-- Chunks a rolling back run asked to restore, still done after ``stall`` seconds with no restore
-- holding them (SKIP LOCKED passes over one at work): their task was lost with a killed worker
-- (a retry waiting in its memory). Asked again now, and not again for another ``stall``.
WITH due AS (
  SELECT c.run_id, c.chunk_no FROM ferry.chunks c JOIN ferry.runs r ON r.id = c.run_id
   WHERE r.status = 'rolling_back' AND c.status = 'done' AND c.restore_failed_at IS NULL
     AND c.restore_requested_at < clock_timestamp() - make_interval(secs => %(stall)s)
   FOR NO KEY UPDATE OF c SKIP LOCKED)
UPDATE ferry.chunks c SET restore_requested_at = clock_timestamp()
  FROM due, ferry.runs r
 WHERE c.run_id = due.run_id AND c.chunk_no = due.chunk_no AND r.id = c.run_id
RETURNING c.run_id, c.chunk_no, r.params->>'queue' AS queue;

-- name: run_control
SELECT status, params->'limits' AS limits, target_rows FROM ferry.runs WHERE id = %(run_id)s;

-- name: db_health
SELECT (SELECT count(*) FROM pg_stat_activity
         WHERE state = 'active' AND backend_type = 'client backend') AS active,
       (SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)
          FROM pg_stat_activity
         WHERE xact_start IS NOT NULL AND backend_type = 'client backend'
           AND pid <> pg_backend_pid()) AS oldest_xact_s,
       (SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)
          FROM pg_stat_replication) AS replica_lag_s,
       (SELECT count(*) FROM pg_locks l
         WHERE NOT l.granted AND l.relation = to_regclass(%(table)s)) AS lock_waits;

-- name: pause_run
UPDATE ferry.runs SET status = 'paused' WHERE id = %(run_id)s AND status = 'running'
RETURNING id;

-- name: add_alert
INSERT INTO ferry.alerts (run_id, type, message) VALUES (%(run_id)s, %(type)s, %(message)s);

-- name: recent_alerts
SELECT type, message, at FROM ferry.alerts WHERE run_id = %(run_id)s ORDER BY at DESC LIMIT 20;

-- name: set_limits
UPDATE ferry.runs SET params = jsonb_set(params, '{limits}', %(limits)s)
 WHERE id = %(run_id)s RETURNING id;

-- name: cancel_run
-- A run still recording its chunks (walk_to) records no more (coordinator.walk).
UPDATE ferry.runs SET status = 'cancelled', finished_at = clock_timestamp(),
       walk_after = NULL, walk_to = NULL
 WHERE id = %(run_id)s AND status IN ('running', 'paused', 'planning')
RETURNING id;

-- name: cancel_chunks
UPDATE ferry.chunks SET status = 'cancelled', lease_expires_at = NULL
 WHERE run_id = %(run_id)s AND status IN ('pending', 'running');
