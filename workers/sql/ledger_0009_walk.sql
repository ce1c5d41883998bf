-- Ferry ledger, version 9: a run's chunks are recorded while its first chunks run.
-- Launch records the first boundaries of the walk of the key index with the run, sends their
-- tasks and records the rest a batch at a time (workers.walk): the first chunk no longer
-- waits for a walk of the whole index (~50 ms a million keys here: half a minute on a table
-- of 500 million rows), and no transaction stays open that long.
-- walk_to: the key the walk ends at (the greatest when it began) while chunks are still to
-- be recorded, NULL once they all are; a running run is not over while it is set.
-- walk_after: the last boundary recorded, where a walk interrupted by a lost coordinator
-- goes on from (`ferry resume`, or a worker's sweeper once walked_at is older than the
-- stall interval).
ALTER TABLE ferry.runs ADD COLUMN IF NOT EXISTS walk_to text;
ALTER TABLE ferry.runs ADD COLUMN IF NOT EXISTS walk_after text;
ALTER TABLE ferry.runs ADD COLUMN IF NOT EXISTS walked_at timestamptz;
