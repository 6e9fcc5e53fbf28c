#!/usr/bin/env bash
#
# postgresql.sh: install PostgreSQL 16 and create one database with its own login role.
#
# What it does:
#   - installs postgresql-16 from the Ubuntu archive (Ubuntu 24.04 ships PostgreSQL 16);
#   - creates the role and the database named by PG_APP_USER and PG_APP_DATABASE (both
#     default to "app"); the role owns the database;
#   - generates a random password for the role and writes the connection details to
#     /root/postgres-credentials (mode 600, owned by root);
#   - makes the server listen on all addresses and adds pg_hba.conf lines that accept that
#     role, for that database only, from any address with scram-sha-256 password auth;
#   - enables the PostgreSQL service so it starts after a reboot.
#
# Ports: 5432/tcp (PostgreSQL). If ufw is active, the script allows 5432/tcp and nothing else.
# Credentials: /root/postgres-credentials. The password is never printed.
#
# Rerunning the script keeps the password already stored in /root/postgres-credentials,
# rewrites the same configuration files and skips the role and database if they exist.
#
# Tested on: written for Ubuntu 24.04; not executed on a real VM in this repository's CI.
# CI checks it with shellcheck and bash -n only.

set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

readonly PG_MAJOR=16
readonly PG_CLUSTER=main
readonly PG_PORT=5432
readonly PG_CONF_DIR="/etc/postgresql/${PG_MAJOR}/${PG_CLUSTER}"
readonly CREDENTIALS_FILE="/root/postgres-credentials"
readonly HBA_BEGIN="# BEGIN postgresql recipe: remote access for the application role"
readonly HBA_END="# END postgresql recipe"

APP_DATABASE="${PG_APP_DATABASE:-app}"
APP_USER="${PG_APP_USER:-app}"
readonly APP_DATABASE APP_USER

log() {
    printf '[postgresql] %s\n' "$*" >&2
}

require_root() {
    if ((EUID != 0)); then
        log "This recipe must run as root (it installs packages and writes to /etc and /root)."
        exit 1
    fi
}

validate_names() {
    # The names are interpolated into SQL and pg_hba.conf, so accept only plain lowercase
    # identifiers that need no quoting (max. 63 bytes, PostgreSQL's NAMEDATALEN - 1).
    local name
    for name in "${APP_DATABASE}" "${APP_USER}"; do
        if [[ ! "${name}" =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; then
            log "Invalid name '${name}': PG_APP_DATABASE and PG_APP_USER must match ^[a-z_][a-z0-9_]{0,62}\$."
            exit 1
        fi
    done
    # The recipe sets a password on the role, opens it to remote logins and revokes public
    # CONNECT on the database, so the built-in roles and databases are off limits.
    if [[ "${APP_USER}" == "postgres" || "${APP_USER}" == pg_* ]]; then
        log "Invalid PG_APP_USER '${APP_USER}': choose a role other than postgres and pg_*."
        exit 1
    fi
    case "${APP_DATABASE}" in
        postgres | template0 | template1)
            log "Invalid PG_APP_DATABASE '${APP_DATABASE}': initdb creates that database, so choose another name."
            exit 1
            ;;
        *) ;;
    esac
}

install_packages() {
    log "Installing postgresql-${PG_MAJOR}"
    apt-get update -q
    apt-get install -y -q "postgresql-${PG_MAJOR}" openssl
}

load_or_create_password() {
    # Reuse the stored password on reruns so that clients that already connect keep working.
    if [[ -f "${CREDENTIALS_FILE}" ]]; then
        APP_PASSWORD="$(sed -n 's/^PGPASSWORD=//p' "${CREDENTIALS_FILE}")"
    else
        APP_PASSWORD=""
    fi
    if [[ ! "${APP_PASSWORD}" =~ ^[0-9a-f]{48}$ ]]; then
        log "Generating a new password for role ${APP_USER}"
        # Hex keeps the password free of characters that need quoting in SQL, URLs or shells.
        APP_PASSWORD="$(openssl rand -hex 24)"
    fi
}

configure_server() {
    log "Configuring ${PG_CONF_DIR}"
    # The Ubuntu package's postgresql.conf includes every *.conf file in conf.d.
    install -d -o postgres -g postgres -m 0755 "${PG_CONF_DIR}/conf.d"
    cat >"${PG_CONF_DIR}/conf.d/90-recipe-remote-access.conf" <<CONF
# Managed by the postgresql recipe. Rerunning the recipe overwrites this file.
listen_addresses = '*'
port = ${PG_PORT}
password_encryption = 'scram-sha-256'
CONF
    chown postgres:postgres "${PG_CONF_DIR}/conf.d/90-recipe-remote-access.conf"
    chmod 0644 "${PG_CONF_DIR}/conf.d/90-recipe-remote-access.conf"

    local hba="${PG_CONF_DIR}/pg_hba.conf"
    # Drop the block a previous run wrote, then append the current one.
    sed -i "/^${HBA_BEGIN}\$/,/^${HBA_END}\$/d" "${hba}"
    cat >>"${hba}" <<HBA
${HBA_BEGIN}
host    ${APP_DATABASE}    ${APP_USER}    0.0.0.0/0    scram-sha-256
host    ${APP_DATABASE}    ${APP_USER}    ::/0         scram-sha-256
${HBA_END}
HBA
}

restart_server() {
    log "Enabling and restarting PostgreSQL ${PG_MAJOR}/${PG_CLUSTER}"
    systemctl enable postgresql.service
    # listen_addresses only takes effect on a restart, not on a reload.
    systemctl restart "postgresql@${PG_MAJOR}-${PG_CLUSTER}.service"

    local attempt
    for attempt in $(seq 1 30); do
        if runuser -u postgres -- pg_isready --quiet --port "${PG_PORT}"; then
            return 0
        fi
        log "Waiting for PostgreSQL to accept connections (${attempt}/30)"
        sleep 1
    done
    log "PostgreSQL did not accept connections within 30 seconds; see journalctl -u postgresql@${PG_MAJOR}-${PG_CLUSTER}."
    exit 1
}

create_role_and_database() {
    log "Creating role ${APP_USER} and database ${APP_DATABASE} if they do not exist"
    # The SQL arrives on stdin, so the password never appears in a process argument list.
    # format() with %I and %L quotes the names and the password, and \gexec runs the result.
    runuser -u postgres -- psql --quiet --no-psqlrc --port "${PG_PORT}" -v ON_ERROR_STOP=1 <<SQL
\\set app_user '${APP_USER}'
\\set app_database '${APP_DATABASE}'
\\set app_password '${APP_PASSWORD}'
SELECT format('CREATE ROLE %I LOGIN', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \\gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'app_user', :'app_password') \\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'app_database', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app_database') \\gexec
SELECT format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', :'app_database') \\gexec
SQL
}

write_credentials() {
    local address="$1"
    log "Writing ${CREDENTIALS_FILE}"
    # A URL needs an IPv6 address in brackets.
    local url_host="${address}"
    if [[ "${address}" == *:* ]]; then
        url_host="[${address}]"
    fi
    local previous_umask
    previous_umask="$(umask)"
    umask 077
    cat >"${CREDENTIALS_FILE}.tmp" <<CREDENTIALS
# PostgreSQL connection details written by the postgresql recipe.
# The variable names are the ones libpq and psql read from the environment.
PGHOST=${address}
PGPORT=${PG_PORT}
PGDATABASE=${APP_DATABASE}
PGUSER=${APP_USER}
PGPASSWORD=${APP_PASSWORD}
DATABASE_URL=postgresql://${APP_USER}:${APP_PASSWORD}@${url_host}:${PG_PORT}/${APP_DATABASE}
CREDENTIALS
    umask "${previous_umask}"
    chown root:root "${CREDENTIALS_FILE}.tmp"
    chmod 0600 "${CREDENTIALS_FILE}.tmp"
    mv -f "${CREDENTIALS_FILE}.tmp" "${CREDENTIALS_FILE}"
}

open_firewall() {
    # Ubuntu cloud images ship ufw inactive, so add a rule only when an administrator enabled it.
    if command -v ufw >/dev/null 2>&1 && ufw status | grep -q '^Status: active'; then
        log "ufw is active: allowing ${PG_PORT}/tcp"
        ufw allow "${PG_PORT}/tcp"
    fi
}

print_summary() {
    local address="$1"
    local ssl_state
    ssl_state="$(runuser -u postgres -- psql --quiet --no-psqlrc --tuples-only --no-align \
        --port "${PG_PORT}" --command 'SHOW ssl')"
    # Ubuntu's cluster normally starts with ssl = on and the snakeoil certificate, which
    # encrypts but does not prove the server's identity.
    local ssl_mode="prefer"
    if [[ "${ssl_state}" == "on" ]]; then
        ssl_mode="require"
    fi
    cat <<SUMMARY

==================== PostgreSQL ${PG_MAJOR} is ready ====================
  Host:         ${address}
  Port:         ${PG_PORT}/tcp (listening on all addresses)
  Database:     ${APP_DATABASE}
  Role:         ${APP_USER} (owns the database; scram-sha-256 password auth)
  Server TLS:   ssl = ${ssl_state}
  Credentials:  ${CREDENTIALS_FILE} (mode 600, root only; the password is not shown here)
  Connect:      on this server:  set -a; . ${CREDENTIALS_FILE}; set +a; psql
                from elsewhere:  psql "host=${address} port=${PG_PORT} dbname=${APP_DATABASE} user=${APP_USER} sslmode=${ssl_mode}"
=========================================================================
SUMMARY
}

main() {
    require_root
    validate_names
    # psql and pg_isready run as postgres, which cannot enter /root.
    cd /
    install_packages
    load_or_create_password
    configure_server
    restart_server
    create_role_and_database

    local address
    address="$(hostname -I | awk '{print $1}')"
    write_credentials "${address:-127.0.0.1}"
    open_firewall
    print_summary "${address:-127.0.0.1}"
}

main "$@"
