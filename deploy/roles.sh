#!/usr/bin/env bash
# Create sluice's three PostgreSQL login roles, idempotently: sluice_worker
# (the worker's writes), sluice_agent (chat agents' claims) and
# sluice_lookup (lead-context reads). Roles belong to the whole cluster and
# creating them needs CREATEROLE, which the role that runs the migrations
# should not hold: so this is its own step, run by an administrator before
# sluice-migrate. What each role may do is granted by the migrations
# (schemas/migrations/006_grants.sql), which refuse to run without them.
#
# Usage: deploy/roles.sh [--password-dir DIR] DSN
#                         (installed as sluice-roles, see sluice-roles(1))
#   DSN                 libpq conninfo or URI of a role with CREATEROLE
#   --password-dir DIR  DIR/sluice_worker, DIR/sluice_agent and
#                       DIR/sluice_lookup each hold one role's password
#                       (a missing file leaves that role's password as it
#                       is); SLUICE_ROLES_PASSWORD_DIR is the default, e.g.
#                       $CREDENTIALS_DIRECTORY. A file readable by group or
#                       others is refused.
#
# Passwords never reach argv, the server or its logs: each is hashed here
# into a SCRAM-SHA-256 verifier, which psql reads from its standard input.
# Without a password a role can still log in by peer or certificate
# authentication (see docs/security.md).
set -euo pipefail

die() { echo "sluice-roles: error: $*" >&2; exit 1; }
usage() { echo "usage: sluice-roles [--password-dir DIR] DSN"; }

roles=(sluice_worker sluice_agent sluice_lookup)
pw_dir="${SLUICE_ROLES_PASSWORD_DIR:-}"
dsn=""
while (($#)); do
    case "$1" in
        -h|--help)
            usage
            echo "Creates the roles sluice_worker, sluice_agent and sluice_lookup (idempotent)."
            exit 0
            ;;
        --password-dir) (($# >= 2)) || die "--password-dir needs a directory"; pw_dir="$2"; shift 2 ;;
        --password-dir=*) pw_dir="${1#*=}"; shift ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) [[ -z "$dsn" ]] || { usage >&2; die "one DSN only"; }; dsn="$1"; shift ;;
    esac
done
[[ -n "$dsn" ]] || { usage >&2; die "no DSN"; }
[[ -z "$pw_dir" || -d "$pw_dir" ]] || die "password directory not found: $pw_dir"
command -v psql >/dev/null 2>&1 || die "psql not found (run deploy/install-deps.sh)"

# scram_verifier FILE: the SCRAM-SHA-256 verifier of the password in FILE
# (trailing newlines dropped), as PostgreSQL stores it: a server given a
# verifier keeps it as is and never sees the password.
scram_verifier() {
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to hash passwords"
    python3 - "$1" <<'EOF'
import base64, hashlib, hmac, os, sys
pw = open(sys.argv[1], "rb").read().rstrip(b"\r\n")
if not pw:
    sys.exit(f"sluice-roles: error: {sys.argv[1]} is empty")
if not all(32 <= c < 127 for c in pw):
    # PostgreSQL normalizes other passwords with SASLprep first.
    sys.exit(f"sluice-roles: error: {sys.argv[1]}: use printable ASCII")
salt, it = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", pw, salt, it)
stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
server = hmac.new(salted, b"Server Key", "sha256").digest()
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${it}:{b64(salt)}${b64(stored)}:{b64(server)}")
EOF
}

script="$(
    printf '%s\n' '\set ON_ERROR_STOP 1'
    printf '%s\n' '\o /dev/null'
    echo 'SET client_min_messages = warning;'
    for r in "${roles[@]}"; do
        # Created with no rights beyond LOGIN; a role that exists with more
        # (made by hand) is refused rather than silently trusted.
        cat <<EOF
DO \$\$
BEGIN
    CREATE ROLE $r LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END \$\$;
DO \$\$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$r'
               AND (rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role $r exists with SUPERUSER, CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS: sluice-roles will not vouch for it; ALTER ROLE it by hand';
    END IF;
END \$\$;
ALTER ROLE $r LOGIN;
EOF
        if [[ -n "$pw_dir" && -e "$pw_dir/$r" ]]; then
            f="$pw_dir/$r"
            # As ssh does with keys: a password others can read is not secret.
            mode="$(stat -L -c %a "$f")" || die "cannot stat $f"
            (( (8#$mode & 8#077) == 0 )) || die "$f is readable by group or others (mode $mode): chmod 600 it"
            v="$(scram_verifier "$f")" || exit 1
            echo "ALTER ROLE $r PASSWORD '$v';"
        fi
    done
)" || exit 1

if ! out="$(psql -X -q -v ON_ERROR_STOP=1 -d "$dsn" -f - <<<"$script" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "roles not created (psql output above; creating roles needs CREATEROLE)"
fi
if [[ -n "$out" ]]; then
    printf '%s\n' "$out" >&2
fi
