comment on migration '20240323_contract_vital_signs_si' is
  'Contract: every vital sign has its SI value';

set lock_timeout = '2s';

-- Validation pre-conditions
do $$
begin
  if not exists_column('vital_signs', 'value_si') then
    raise exception 'Column vital_signs.value_si is missing: apply 20240321 first';
  end if;
end $$;

-- Forward migration: NOT VALID takes a brief lock; VALIDATE scans without blocking writes.
alter table vital_signs
  add constraint vital_signs_value_si_present check (value_si is not null) not valid;
alter table vital_signs validate constraint vital_signs_value_si_present;

-- Rollback script
-- alter table vital_signs drop constraint if exists vital_signs_value_si_present;
