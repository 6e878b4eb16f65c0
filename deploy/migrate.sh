#!/usr/bin/env bash
# Apply the SQL migrations in schemas/migrations/*.sql to a database, in file
# name order, each at most once and each in its own transaction. Applied files
# are recorded in sluice_schema_migrations(name, applied_at). A session-level
# advisory lock serializes concurrent runs against the same database.
#
# Usage: deploy/migrate.sh DSN   (installed as sluice-migrate, see sluice-migrate(1))
#   DSN                     libpq conninfo or URI (postgresql://...)
#   SLUICE_MIGRATIONS_DIR   overrides the migrations directory: by default
#                           schemas/migrations of the source tree, or
#                           share/sluice/schemas/migrations next to an
#                           installed bin/sluice-migrate
#
# Migration files must not contain transaction control (BEGIN/COMMIT).
set -euo pipefail

die() { echo "migrate.sh: error: $*" >&2; exit 1; }

if [[ $# -eq 1 && ( "$1" == -h || "$1" == --help ) ]]; then
    echo "usage: sluice-migrate DSN"
    echo "Applies the SQL migrations not yet applied to the database DSN."
    echo "SLUICE_MIGRATIONS_DIR overrides the migrations directory."
    exit 0
fi
[[ $# -eq 1 && -n "$1" ]] || die "usage: sluice-migrate DSN"
dsn="$1"

# deploy/migrate.sh in the source tree, or $PREFIX/bin/sluice-migrate.
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
default_dir="$top/schemas/migrations"
[[ -d "$default_dir" ]] || default_dir="$top/share/sluice/schemas/migrations"
dir="${SLUICE_MIGRATIONS_DIR:-$default_dir}"
[[ -d "$dir" ]] || die "migrations directory not found: $dir"
command -v psql >/dev/null 2>&1 || die "psql not found (run deploy/install-deps.sh)"

# Fixed advisory lock key for "sluice schema migrations".
lock_key=7355608001

# psql quoting of a meta-command argument: '...' with ' doubled.
psql_quote() { printf "'%s'" "${1//\'/\'\'}"; }

script="$(mktemp)"
trap 'rm -f "$script"' EXIT
{
    printf '%s\n' '\set ON_ERROR_STOP 1'
    printf '%s\n' '\o /dev/null'
    echo 'SET client_min_messages = warning;'
    echo "SELECT pg_advisory_lock($lock_key);"
    echo 'CREATE TABLE IF NOT EXISTS sluice_schema_migrations ('
    echo '    name        text PRIMARY KEY,'
    echo '    applied_at  timestamptz NOT NULL DEFAULT now()'
    echo ');'
    shopt -s nullglob
    files=("$dir"/*.sql)
    # Glob order is locale dependent; sort by name in the C locale.
    mapfile -t files < <(printf '%s\n' "${files[@]}" | LC_ALL=C sort)
    for f in "${files[@]}"; do
        [[ -n "$f" ]] || continue
        name="$(basename "$f")"
        [[ "$name" =~ ^[A-Za-z0-9_.-]+\.sql$ ]] \
            || die "unsupported migration file name: $name (use [A-Za-z0-9_.-])"
        echo "\\set mig_name '$name'"
        echo "SELECT EXISTS (SELECT 1 FROM sluice_schema_migrations WHERE name = :'mig_name') AS mig_applied \\gset"
        printf '%s\n' '\if :mig_applied'
        printf '%s\n' '\else'
        echo 'BEGIN;'
        echo "\\i $(psql_quote "$f")"
        echo "INSERT INTO sluice_schema_migrations (name) VALUES (:'mig_name');"
        echo 'COMMIT;'
        printf '%s\n' '\endif'
    done
    echo "SELECT pg_advisory_unlock($lock_key);"
} >"$script"

if ! out="$(psql -X -q -v ON_ERROR_STOP=1 -d "$dsn" -f "$script" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "migrations not applied (psql output above; a failing file is rolled back as a whole)"
fi
# psql may print warnings; keep them visible but not on success noise.
if [[ -n "$out" ]]; then
    printf '%s\n' "$out" >&2
fi
