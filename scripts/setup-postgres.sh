#!/usr/bin/env bash
# Installs PostgreSQL from Debian's packages (when missing), starts its
# cluster and creates the role the tests use: `tollgate`, password
# `tollgate-test`, allowed to create databases (each test makes its own and
# drops it), with TLS on (a certificate naming localhost). The tests reach
# it at
#   TOLLGATE_TEST_PG_URL=postgres://tollgate:tollgate-test@127.0.0.1:5432/postgres
# Client certificates: a small CA of our own (the server's `ssl_ca_file`), a
# role `tollgate_cert` that may only log in with a certificate it signed
# (`hostssl ... cert` in pg_hba.conf, no password), and its certificate and
# key (mode 600) in $TOLLGATE_TEST_PG_CLIENT_DIR (default
# /var/lib/tollgate-test/pg-client: ca.crt, client.crt, client.key), with a
# certificate of the same name signed by another CA (rogue.crt, rogue.key)
# for the refusal tests.
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

# TLS on, with a certificate naming `localhost`: the team ledger's TLS tests
# connect with sslmode=require, verify-ca and verify-full (the certificate
# as root, host localhost). Debian's cluster uses the snakeoil certificate of
# the ssl-cert package, made for the machine's hostname at install time;
# when it is missing or names another host, a certificate of our own is made
# beside the cluster's configuration.
if ! command -v openssl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq openssl ssl-cert >/dev/null
fi
names_localhost() {
    [ -r "$1" ] && openssl x509 -checkhost localhost -noout -in "$1" 2>/dev/null | grep -q 'does match'
}
show() { su postgres -c "psql -qAtc 'SHOW $1'"; }
if [ "$(show ssl)" != on ] || ! names_localhost "$(show ssl_cert_file)"; then
    cert=/etc/ssl/certs/ssl-cert-snakeoil.pem
    key=/etc/ssl/private/ssl-cert-snakeoil.key
    if ! names_localhost "$cert" || ! su postgres -c "test -r $key"; then
        conf="/etc/postgresql/$version/main"
        cert="$conf/tollgate-localhost.crt"
        key="$conf/tollgate-localhost.key"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
            -addext subjectAltName=DNS:localhost -keyout "$key" -out "$cert" 2>/dev/null
        chown postgres:postgres "$cert" "$key"
        chmod 644 "$cert"
        chmod 600 "$key"
    fi
    su postgres -c "psql -qAt" <<SQL >/dev/null
ALTER SYSTEM SET ssl_cert_file = '$cert';
ALTER SYSTEM SET ssl_key_file = '$key';
ALTER SYSTEM SET ssl = on;
SELECT pg_reload_conf();
SQL
    # The reload is asynchronous (bounded wait).
    for _ in $(seq 1 50); do
        if [ "$(show ssl)" = on ]; then
            break
        fi
        sleep 0.2
    done
    if [ "$(show ssl)" != on ]; then
        echo "PostgreSQL did not turn TLS on (see its log)" >&2
        exit 1
    fi
fi

su postgres -c "psql -qAt" <<'SQL' >/dev/null
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tollgate') THEN
        CREATE ROLE tollgate LOGIN CREATEDB PASSWORD 'tollgate-test';
    END IF;
END
$$;
SQL
# Client certificates (see the header). Made once; kept across runs.
client_dir=${TOLLGATE_TEST_PG_CLIENT_DIR:-/var/lib/tollgate-test/pg-client}
conf="/etc/postgresql/$version/main"
mkdir -p "$client_dir"
chmod 755 "$client_dir"
# X.509 v3 with a client-auth usage: rustls refuses v1 certificates.
v3() { openssl x509 -in "$1" -noout -text 2>/dev/null | grep -q 'Version: 3'; }
if [ ! -s "$client_dir/client.key" ] || [ ! -s "$client_dir/rogue.key" ] \
    || [ ! -s "$conf/tollgate-client-ca.crt" ] || ! v3 "$client_dir/client.crt" || ! v3 "$client_dir/rogue.crt"; then
    work=$(mktemp -d)
    # sign NAME CA_NAME: a CA, and a client certificate for role
    # tollgate_cert signed by it.
    sign() {
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$2" \
            -keyout "$work/$2.key" -out "$work/$2.crt" 2>/dev/null
        openssl req -new -newkey rsa:2048 -nodes -subj /CN=tollgate_cert \
            -keyout "$work/$1.key" -out "$work/$1.csr" 2>/dev/null
        printf '%s\n' basicConstraints=CA:FALSE keyUsage=digitalSignature,keyEncipherment \
            extendedKeyUsage=clientAuth > "$work/ext"
        openssl x509 -req -in "$work/$1.csr" -CA "$work/$2.crt" -CAkey "$work/$2.key" \
            -CAcreateserial -days 3650 -extfile "$work/ext" -out "$work/$1.crt" 2>/dev/null
    }
    sign client tollgate-test-client-ca
    sign rogue tollgate-test-rogue-ca
    install -m 644 "$work/tollgate-test-client-ca.crt" "$conf/tollgate-client-ca.crt"
    install -m 644 "$work/tollgate-test-client-ca.crt" "$client_dir/ca.crt"
    for f in client rogue; do
        install -m 644 "$work/$f.crt" "$client_dir/$f.crt"
        install -m 600 "$work/$f.key" "$client_dir/$f.key"
    done
    rm -rf "$work"
fi
hba=$(show hba_file)
if ! grep -q '^hostssl all tollgate_cert' "$hba"; then
    # First lines win: the certificate role never falls through to a
    # password line.
    { printf '%s\n' \
        '# tollgate tests: this role logs in with a client certificate only' \
        'hostssl all tollgate_cert 127.0.0.1/32 cert' \
        'hostssl all tollgate_cert ::1/128 cert' \
        'host all tollgate_cert 0.0.0.0/0 reject' \
        'host all tollgate_cert ::/0 reject'
      cat "$hba"; } > "$hba.new"
    chown postgres:postgres "$hba.new"
    chmod 640 "$hba.new"
    mv "$hba.new" "$hba"
fi
su postgres -c "psql -qAt" <<SQL >/dev/null
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tollgate_cert') THEN
        CREATE ROLE tollgate_cert LOGIN;
    END IF;
END
\$\$;
ALTER SYSTEM SET ssl_ca_file = '$conf/tollgate-client-ca.crt';
SELECT pg_reload_conf();
SQL
for _ in $(seq 1 50); do
    if [ "$(show ssl_ca_file)" = "$conf/tollgate-client-ca.crt" ]; then
        break
    fi
    sleep 0.2
done

echo "PostgreSQL $version ready: postgres://tollgate:***@127.0.0.1:5432/postgres (client certificates in $client_dir)"
