-- The ny_testing schemas (default names, NyTestingSettings) and the reference table of REGION / STATEWIDE
-- rows. The county tables ny_testing.<county_slug> are data-driven: the load creates one per county it
-- meets (warehouse.publish_county), all with the same columns; a later migration that changes them
-- loops over the tables of schema ny_testing. Staging tables are per run and dropped after it.
-- IF NOT EXISTS: databases created before migrations existed already have these and keep their rows.
CREATE SCHEMA IF NOT EXISTS ny_testing;
CREATE SCHEMA IF NOT EXISTS ny_testing_reference;
CREATE SCHEMA IF NOT EXISTS ny_testing_staging;
CREATE TABLE IF NOT EXISTS ny_testing_reference.geography_totals (
    geography text NOT NULL,
    name text NOT NULL,
    test_date date NOT NULL,
    new_positives bigint NOT NULL,
    cumulative_number_of_positives bigint NOT NULL,
    total_number_of_tests_performed bigint NOT NULL,
    cumulative_number_of_tests_performed bigint NOT NULL,
    load_date timestamptz NOT NULL,
    PRIMARY KEY (geography, name, test_date)
);
