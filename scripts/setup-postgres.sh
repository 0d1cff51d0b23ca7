#!/usr/bin/env bash
# Installs PostgreSQL from Debian's packages (when missing), starts its
# cluster and creates the role the tests use: `tollgate`, password
# `tollgate-test`, allowed to create databases (each test makes its own and
# drops it). The tests reach it at
#   TOLLGATE_TEST_PG_URL=postgres://tollgate:tollgate-test@127.0.0.1:5432/postgres
# Idempotent; needs root (CI and the dev machines run as root).
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi

# Whatever version Debian gave: the newest installed.
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
    pg_createcluster "$version" main >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
    pg_ctlcluster "$version" main start
fi

# Wait for it to accept connections (bounded).
for _ in $(seq 1 50); do
    if su postgres -c "psql -qAtc 'SELECT 1'" >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done

su postgres -c "psql -qAt" <<'SQL' >/dev/null
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tollgate') THEN
        CREATE ROLE tollgate LOGIN CREATEDB PASSWORD 'tollgate-test';
    END IF;
END
$$;
SQL
echo "PostgreSQL $version ready: postgres://tollgate:***@127.0.0.1:5432/postgres"
