#!/usr/bin/env bash
# Databases and roles of the platform, one owner role per database (least privilege):
#
#   database   owner role          used by
#   dagster    dagster             Dagster's run/event/schedule storage (DAGSTER_STORAGE_URL)
#   warehouse  warehouse_writer    the published tables (WAREHOUSE_DSN)
#   lakehouse  lakehouse_catalog   pyiceberg's SQL catalog (LAKEHOUSE_CATALOG_DSN)
#   -          analyst             read-only on warehouse: the published tables (granted by migrations)
#
# The postgres image runs this once, on an empty data directory (/docker-entrypoint-initdb.d), as the
# superuser over the unix socket. It is also safe to run again against a live server (roles and
# databases are created only when missing, passwords and grants are re-applied), e.g.
#   PGHOST=127.0.0.1 PGPORT=5432 PGPASSWORD=... POSTGRES_USER=postgres ./deploy/postgres/init.sh
# Mirrors covid_lakehouse.lib.embedded.provision_postgres (the laptop/CI stack).
#
# Passwords come from the environment and reach SQL only as psql variables quoted with :'var', so any
# character is safe here; they are read with \getenv rather than passed as `psql -v`, which would show
# them in the process list. (They also end up in connection URLs: keep them URL-safe, see .env.example.)
set -Eeuo pipefail

: "${DAGSTER_DB_PASSWORD:?DAGSTER_DB_PASSWORD must be set}"
: "${WAREHOUSE_DB_PASSWORD:?WAREHOUSE_DB_PASSWORD must be set}"
: "${LAKEHOUSE_DB_PASSWORD:?LAKEHOUSE_DB_PASSWORD must be set}"
: "${ANALYST_DB_PASSWORD:?ANALYST_DB_PASSWORD must be set}"

psql_as_superuser() {
    psql --no-psqlrc --set ON_ERROR_STOP=1 --quiet \
        --username "${POSTGRES_USER:-postgres}" --dbname "${1}"
}

# ---- roles and databases (cluster-wide) ---------------------------------------------------------
psql_as_superuser "${POSTGRES_DB:-postgres}" <<'EOSQL'
\getenv dagster_pw DAGSTER_DB_PASSWORD
\getenv warehouse_pw WAREHOUSE_DB_PASSWORD
\getenv lakehouse_pw LAKEHOUSE_DB_PASSWORD
\getenv analyst_pw ANALYST_DB_PASSWORD

-- Roles: created when missing, then (re)configured, so a rerun also rotates passwords.
SELECT format('CREATE ROLE %I', r)
FROM unnest(ARRAY['dagster', 'warehouse_writer', 'lakehouse_catalog', 'analyst']) AS r
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r)
\gexec

ALTER ROLE dagster           WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'dagster_pw';
ALTER ROLE warehouse_writer  WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'warehouse_pw';
ALTER ROLE lakehouse_catalog WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'lakehouse_pw';
ALTER ROLE analyst           WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'analyst_pw';

-- The analyst is read-only because of its grants: CONNECT on warehouse and SELECT on published tables
-- only (the migrations grant those). These settings are defaults for tools, not a guarantee: any role
-- may change them in its own session. idle_in_transaction_session_timeout ends a forgotten open
-- transaction, whose locks would otherwise make the platform's view rebuilds and ALTER TABLEs wait.
-- Mirrored by covid_lakehouse.lib.embedded.postgres.ANALYST_DEFAULTS.
ALTER ROLE analyst SET default_transaction_read_only = on;
ALTER ROLE analyst SET statement_timeout = '15min';
ALTER ROLE analyst SET idle_in_transaction_session_timeout = '10min';

-- Databases, each owned by its role (CREATE DATABASE cannot run inside a DO block: \gexec).
SELECT format('CREATE DATABASE %I OWNER %I', db, owner)
FROM (VALUES ('dagster', 'dagster'),
             ('warehouse', 'warehouse_writer'),
             ('lakehouse', 'lakehouse_catalog')) AS d(db, owner)
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = db)
\gexec

-- Nobody connects to a database they were not given (owners always can).
REVOKE ALL ON DATABASE dagster FROM PUBLIC;
REVOKE ALL ON DATABASE warehouse FROM PUBLIC;
REVOKE ALL ON DATABASE lakehouse FROM PUBLIC;
GRANT CONNECT ON DATABASE warehouse TO analyst;
EOSQL

# ---- warehouse: only warehouse_writer creates; the analyst's SELECT grants on published tables come
# with the warehouse migrations (`covid-lakehouse migrate`), next to the tables they publish -------------
psql_as_superuser warehouse <<'EOSQL'
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO warehouse_writer;
EOSQL

echo "init.sh: roles dagster, warehouse_writer, lakehouse_catalog, analyst and databases dagster, warehouse, lakehouse are ready"
