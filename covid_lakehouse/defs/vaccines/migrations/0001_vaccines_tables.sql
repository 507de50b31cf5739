-- vaccines.people_per_dose (the data product) and vaccines.excluded_jurisdictions, with a dose column per
-- default manufacturer (Moderna, Pfizer). A manufacturer added by configuration (VACCINES_MANUFACTURERS)
-- gets its nullable doses_<m> column from publish.ensure_tables at its first publish: additive only.
-- IF NOT EXISTS: databases created before migrations existed already have these tables and keep their rows.
CREATE SCHEMA IF NOT EXISTS vaccines;
CREATE TABLE IF NOT EXISTS vaccines.people_per_dose (
    state text PRIMARY KEY,
    population bigint NOT NULL,
    doses_moderna bigint,
    doses_pfizer bigint,
    total_doses bigint NOT NULL,
    people_per_dose double precision,
    first_allocation_week date,
    last_allocation_week date,
    loaded_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS vaccines.excluded_jurisdictions (
    jurisdiction text PRIMARY KEY,
    doses_moderna bigint,
    doses_pfizer bigint,
    total_doses bigint NOT NULL,
    loaded_at timestamptz NOT NULL
);
