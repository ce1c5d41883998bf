-- Ferry ledger, version 17: a chunk is restored only when a rollback asked for it.
--
-- `ferry rollback` marks the chunks it dispatches (restore_requested_at, in the transaction
-- that starts the rollback); a restore task for a chunk nobody asked to restore (a stray or
-- forged task, a redelivery after the chunk ran again) finds no mark and does nothing. A chunk
-- that is applied again forgets the mark.
ALTER TABLE ferry.chunks ADD COLUMN restore_requested_at timestamptz;
UPDATE ferry.chunks c SET restore_requested_at = clock_timestamp()
  FROM ferry.runs r
 WHERE r.id = c.run_id AND r.status = 'rolling_back' AND c.status = 'done';
