#!/bin/bash
# Entrypoint of a replica: on an empty volume, clone the primary with pg_basebackup
# (streaming WAL, the replica's own slot, -R writes primary_conninfo and standby.signal),
# then hand over to the official image's entrypoint, which starts postgres. The replica's
# cluster_name (its walreceiver's application_name, as in devcluster) is its REPLICA_NAME.
set -euo pipefail
: "${PRIMARY_HOST:?}" "${REPLICA_NAME:?}" "${REPLICATION_PASSWORD:?}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  until gosu postgres pg_isready -q -h "$PRIMARY_HOST" -p 5432; do sleep 1; done
  PGPASSWORD="$REPLICATION_PASSWORD" gosu postgres pg_basebackup \
    -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
    -X stream -S "$REPLICA_NAME" -c fast -R
fi
exec docker-entrypoint.sh "$@" -c "cluster_name=$REPLICA_NAME"
