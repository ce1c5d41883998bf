comment on migration '20240320_index_vital_signs' is
  'Find a patient''s vital signs by time without scanning the table';

-- Fail fast rather than queue the application behind a lock.
set lock_timeout = '2s';

-- Validation pre-conditions
do $$
begin
  if not exists_table('vital_signs') then
    raise exception 'Table vital_signs is missing: apply 20240315_add_patient_vitals first';
  end if;
end $$;

-- Forward migration: built without blocking writes, so ferry runs it outside a transaction.
create index concurrently if not exists vital_signs_patient_measured
  on vital_signs (patient_id, measured_at);

-- Rollback script
-- drop index concurrently if exists vital_signs_patient_measured;
