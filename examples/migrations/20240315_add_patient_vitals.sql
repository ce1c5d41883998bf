-- Migration metadata
comment on migration '20240315_add_patient_vitals' is
  'Add vital signs tracking capability';

-- Validation pre-conditions
do $$
begin
  -- Verify schema state
  if exists_table('vital_signs') then
    raise exception 'Table vital_signs already exists';
  end if;
end $$;

-- Forward migration
create table vital_signs (
  id uuid primary key default gen_random_uuid(),
  patient_id uuid references patients(id),
  type varchar(50) not null,
  value numeric not null,
  unit varchar(20) not null,
  measured_at timestamp with time zone default now(),
  created_at timestamp with time zone default now(),
  updated_at timestamp with time zone default now()
);

-- Rollback script
-- drop table if exists vital_signs;
