-- Ferry ledger, version 8: a run's chunks go to the broker a window at a time.
-- Sending every chunk at launch filled the queue with tasks that mostly waited for the
-- throttle, each wait a Celery retry (a new message, events, an ack) every few seconds: a run
-- of 5,000 chunks kept two workers at 1.55 of 2 cores (bench/waiting.py). Now a chunk is sent
-- when one of the run's chunks settles and releases it; the ledger says which were sent.
-- sent_at: when the chunk's task was last sent; NULL: held back in the ledger.

ALTER TABLE ferry.chunks ADD COLUMN IF NOT EXISTS sent_at timestamptz;
-- Runs launched before this version sent every chunk at launch.
UPDATE ferry.chunks SET sent_at = coalesce(started_at, clock_timestamp())
 WHERE status IN ('pending', 'running') AND sent_at IS NULL;

-- A release reads a few rows of these however many chunks the run has.
CREATE INDEX IF NOT EXISTS chunks_held ON ferry.chunks (run_id, chunk_no)
 WHERE status = 'pending' AND sent_at IS NULL;
CREATE INDEX IF NOT EXISTS chunks_sent ON ferry.chunks (run_id)
 WHERE status IN ('pending', 'running') AND sent_at IS NOT NULL;

-- Mark the run's next chunks sent and return them: the lowest-numbered held-back ones, as
-- many as bring the chunks sent and not yet settled up to p_window. p_settling: a chunk that
-- settles in the calling statement (it is still unsettled in that statement's snapshot).
-- SKIP LOCKED: workers finishing at once release different chunks, and none waits. A run that
-- is not running (paused, cancelled, rolling back) releases nothing: resume sends a window.
CREATE OR REPLACE FUNCTION ferry.release_chunks(p_run bigint, p_window integer, p_settling integer)
RETURNS SETOF integer LANGUAGE sql AS $$
    WITH outstanding AS (
        SELECT count(*) AS n FROM ferry.chunks
         WHERE run_id = p_run AND status IN ('pending', 'running') AND sent_at IS NOT NULL
           AND chunk_no IS DISTINCT FROM p_settling
    ), next AS (
        SELECT chunk_no FROM ferry.chunks
         WHERE run_id = p_run AND status = 'pending' AND sent_at IS NULL
           AND EXISTS (SELECT 1 FROM ferry.runs WHERE id = p_run AND status = 'running')
         ORDER BY chunk_no
         LIMIT greatest(0, p_window - (SELECT n FROM outstanding))
           FOR UPDATE SKIP LOCKED
    )
    UPDATE ferry.chunks c SET sent_at = clock_timestamp()
      FROM next
     WHERE c.run_id = p_run AND c.chunk_no = next.chunk_no
    RETURNING c.chunk_no
$$;
