-- Ferry ledger, version 6: chunk sizing to a target duration.
-- target_rows: the run's current rows per chunk, adapted from measured durations (NULL until
-- the first chunk is measured). planned_rows: a chunk's size when it was planned or split
-- (NULL: the spec's chunk_size). split_from: the chunk this one was cut from.

ALTER TABLE ferry.runs ADD COLUMN IF NOT EXISTS target_rows integer;
ALTER TABLE ferry.chunks ADD COLUMN IF NOT EXISTS planned_rows integer;
ALTER TABLE ferry.chunks ADD COLUMN IF NOT EXISTS split_from integer;
