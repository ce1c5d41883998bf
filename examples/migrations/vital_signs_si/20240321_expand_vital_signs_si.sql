comment on migration '20240321_expand_vital_signs_si' is
  'Expand: vital signs in SI units next to the values as measured';

-- Fail fast rather than queue the application behind a lock.
set lock_timeout = '2s';

-- Validation pre-conditions
do $$
begin
  if not exists_table('vital_signs') then
    raise exception 'Table vital_signs is missing: apply 20240315_add_patient_vitals first';
  end if;
  if exists_column('vital_signs', 'value_si') then
    raise exception 'Column vital_signs.value_si already exists';
  end if;
end $$;

-- Forward migration: nullable columns without a default, so no table rewrite. The next
-- version (a Python backfill step) fills them; the application keeps writing value/unit.
alter table vital_signs
  add column value_si numeric,
  add column unit_si varchar(20);

-- Rollback script
-- alter table vital_signs drop column if exists unit_si, drop column if exists value_si;
