#!/bin/bash
# Runs once, when the primary's volume is initialised (/docker-entrypoint-initdb.d).
# A replication role, one physical slot per replica (as devcluster does), and replication
# connections allowed from the compose network.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '${REPLICATION_PASSWORD}';
SELECT pg_create_physical_replication_slot('replica1', true);
SELECT pg_create_physical_replication_slot('replica2', true);
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
