#!/usr/bin/env bash
# Private PostgreSQL, Redis and single-node Kafka (KRaft) for development,
# tests and benchmarks, all living under one directory and bound to free
# loopback ports.
#
# Usage: deploy/services.sh COMMAND DIR
#   start DIR                  start whatever is not running (all three in
#                              parallel), wait until ready, apply migrations,
#                              write DIR/services.env; a no-op when all run
#   stop DIR                   stop all (SIGTERM, then SIGKILL after
#                              SLUICE_STOP_TIMEOUT s); succeeds if none runs
#   status DIR                 print the state; exit 0 if all run, 3 if not
#   start-SVC DIR              SVC is kafka, postgres or redis (with a
#                              cluster also kafka1..3): start one
#   stop-SVC DIR               stop one (graceful, as above)
#   restart-SVC DIR            stop, then start again on the same port/data
#   kill-SVC DIR               SIGKILL one at once (crash injection)
#   destroy DIR                stop all, then delete DIR and its data
#   start-cluster DIR          start with a three-broker Kafka cluster
#                              (the same as SLUICE_KAFKA_NODES=3 start DIR)
#
# Three-broker cluster (SLUICE_KAFKA_NODES=3 on the first start; DIR keeps
# the choice in DIR/kafka-nodes, later commands follow it): brokers 1..3,
# each combined controller+broker of one 3-voter KRaft quorum, in
# DIR/kafka1..3, with default.replication.factor=3, min.insync.replicas=2
# and internal topics 3/2. There `kafka` (start-kafka, kill-kafka, ...)
# means all three brokers and kafka1, kafka2, kafka3 one of them
# (kill-kafka2 DIR, start-kafka2 DIR). A broker keeps its ports.
#
# DIR/services.env holds shell lines `export NAME=VALUE`:
#   SLUICE_POSTGRES_DSN SLUICE_REDIS_URL SLUICE_KAFKA_BROKERS
#   SLUICE_PG_PORT SLUICE_REDIS_PORT SLUICE_KAFKA_PORT
#   SLUICE_KAFKA_CONTROLLER_PORT SLUICE_PG_USER SLUICE_PG_SOCKET_DIR
#   SLUICE_PG_PID SLUICE_REDIS_PID SLUICE_KAFKA_PID SLUICE_SERVICES_DIR
#   SLUICE_PG_WORKER_DSN SLUICE_PG_AGENT_DSN SLUICE_PG_LOOKUP_DSN
#   SLUICE_PG_TLS SLUICE_PG_CA
# (a PID is empty while its service is stopped). SLUICE_POSTGRES_DSN is the
# cluster owner's (it runs the migrations); the SLUICE_PG_*_DSN are sluice's
# roles (deploy/roles.sh, made before the migrations, which grant them).
# With a cluster, SLUICE_KAFKA_BROKERS lists all three brokers, SLUICE_KAFKA_PORT,
# SLUICE_KAFKA_CONTROLLER_PORT and SLUICE_KAFKA_PID are broker 1's, and
# SLUICE_KAFKA_NODES=3 and SLUICE_KAFKA<N>_PORT, SLUICE_KAFKA<N>_PID,
# SLUICE_KAFKA<N>_CONTROLLER_PORT (N = 1..3) are added.
#
# Secure broker (SLUICE_KAFKA_SECURE=1 on the first start; DIR keeps the
# choice in DIR/kafka-secure): the single broker's client listener is
# SASL_SSL with SCRAM-SHA-512, a test CA and broker certificate made with
# openssl, users admin, sluice_ingest and sluice_worker with generated
# passwords (DIR/kafka/secure/<user>.password, mode 0600), StandardAuthorizer
# with nothing allowed by default, the topics sluice.events and
# sluice.events.dlq, and the ACLs listed in docs/security.md (see there).
# services.env then adds SLUICE_KAFKA_SECURE=1, SLUICE_KAFKA_CA,
# SLUICE_KAFKA_SECRETS (the password files' directory) and
# SLUICE_KAFKA_ADMIN_CONFIG (client properties of the admin).
#
# Environment:
#   PG_PORT REDIS_PORT KAFKA_PORT KAFKA_CONTROLLER_PORT   fixed ports
#                          (KAFKA_* only for the single broker)
#   SLUICE_KAFKA_NODES     1 (default) or 3, see above
#   SLUICE_KAFKA_SECURE    1: the secure single broker, see above
#   SLUICE_START_TIMEOUT   seconds to wait for each service (default 60)
#   SLUICE_STOP_TIMEOUT    seconds before SIGKILL on stop (default 15)
#   SLUICE_KAFKA_HEAP      JVM heap flags (default "-Xmx512m -Xms512m";
#                          for each broker of a cluster "-Xmx384m -Xms384m")
#   SLUICE_KAFKA_LOG_LEVEL root log level of the broker (default WARN)
#   SLUICE_KAFKA_CDS=0     no JVM class-data-sharing archive for the broker
#   SLUICE_CACHE           jar cache (see deploy/kafka/fetch.sh)
#   SLUICE_PG_BINDIR       PostgreSQL server binaries (default: newest
#                          /usr/lib/postgresql/*/bin)
#   SLUICE_PG_TLS=1        secure PostgreSQL, chosen when its cluster is
#                          made (DIR keeps the choice in DIR/pg-tls; a plain
#                          cluster must be destroyed first): a test CA and a
#                          server certificate for 127.0.0.1 and localhost
#                          made with openssl (DIR/pg-tls/ca.crt), ssl=on,
#                          pg_hba `hostssl ... scram-sha-256` only over TCP
#                          (plain TCP is refused) and `local` for the owner
#                          alone (peer); random passwords for the owner and
#                          the roles in DIR/pg-tls/secrets/, the clients'
#                          passfile DIR/pg-tls/pgpass; every DSN carries
#                          sslmode=verify-full, sslrootcert and passfile.
#
# Logs: DIR/kafka/kafka.log (+ kafka.out for the JVM; a cluster's in
# DIR/kafka1..3), DIR/redis/redis.log,
# DIR/pg/postgres.log. Ports are kept in DIR/ports/ and reused on the next
# start when free (always by start-SVC/restart-SVC, which fail otherwise).
#
# Running as root: PostgreSQL refuses root, so it runs as the `postgres`
# system user (created if missing) and the DSN's user is postgres. When that
# user cannot reach DIR (e.g. DIR under a 0700 directory), the cluster lives
# in a private directory under /tmp and DIR/pg is a symlink to it.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prog="services.sh"

die() { echo "$prog: error: $*" >&2; exit 1; }
warn() { echo "$prog: $*" >&2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

start_timeout="${SLUICE_START_TIMEOUT:-60}"
stop_timeout="${SLUICE_STOP_TIMEOUT:-15}"
[[ "$start_timeout" =~ ^[0-9]+$ ]] || die "SLUICE_START_TIMEOUT must be a number of seconds"
[[ "$stop_timeout" =~ ^[0-9]+$ ]] || die "SLUICE_STOP_TIMEOUT must be a number of seconds"

# ------------------------------------------------------------ helpers ----

now_ds() { # monotonic-ish time in deciseconds
    local up
    read -r up _ </proc/uptime
    up="${up/./}"
    echo $((10#$up / 10))
}

# alive PID PATTERN: the process exists (not a zombie) and its command line
# contains PATTERN, which guards against recycled pids.
alive() {
    local pid="$1" pat="$2" cmd
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    [[ -n "$cmd" && "$cmd" == *"$pat"* ]]
}

# A process that exists, is not a zombie, and has not become what it will
# exec yet (its command line lacks "java").
starting() {
    local pid="$1" stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]] || return 1
    ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q java
}

pgid_of() {
    local stat rest
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    rest="${stat##*) }"
    # fields after comm: state ppid pgrp ...
    local -a f
    read -r -a f <<<"$rest"
    echo "${f[2]}"
}

my_pgid="$(pgid_of $$)"

# True while a live (non-zombie) process is in process group PGID. Zombies
# do not count: orphans may wait a while for init to reap them.
group_alive() {
    local f stat rest
    local -a fl
    for f in /proc/[0-9]*/stat; do
        { read -r stat <"$f"; } 2>/dev/null || continue
        rest="${stat##*) }"
        read -r -a fl <<<"$rest"
        [[ "${fl[2]:-}" == "$1" && "${fl[0]:-}" != Z ]] && return 0
    done
    return 1
}
stop_forced=0

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# new_ports N [EXCLUDE...]: N distinct free loopback ports below the
# ephemeral range (so client sockets never squat on them while a service is
# stopped for a fault-injection test).
new_ports() {
    python3 - "$@" <<'EOF'
import random, socket, sys
n = int(sys.argv[1]); excl = {int(p) for p in sys.argv[2:]}
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except Exception:
    low = 32768
lo, hi = 15000, max(15001, low - 1)
socks, out = [], []
for _ in range(20000):
    if len(out) == n:
        break
    p = random.randint(lo, hi)
    if p in excl or p in out:
        continue
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p)); s.listen(1)
    except OSError:
        s.close(); continue
    socks.append(s); out.append(p)
if len(out) != n:
    sys.exit("no free loopback ports found")
print(" ".join(map(str, out)))
EOF
}

# Close every descriptor above 2 (e.g. a caller's pipes or make's jobserver)
# in a subshell that is about to exec a daemon, so the daemon holds none.
close_inherited_fds() {
    local f fd
    for f in "/proc/$BASHPID/fd/"*; do
        fd="${f##*/}"
        [[ "$fd" =~ ^[0-9]+$ ]] || continue
        if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

tail_log() { # tail_log FILE...: last lines of logs, to stderr
    local f
    for f in "$@"; do
        if [[ -s "$f" ]]; then
            echo "---- last lines of $f ----" >&2
            tail -n 40 "$f" >&2 || true
        fi
    done
}

# stop_pid NAME PID PATTERN SIGNAL [TIMEOUT]: signal, wait, then SIGKILL the
# process group; waits until the group (e.g. PostgreSQL backends) is gone.
# SIGNAL KILL kills the whole group at once.
stop_pid() {
    local name="$1" pid="$2" pat="$3" sig="$4" timeout="${5:-$stop_timeout}"
    alive "$pid" "$pat" || return 0
    local pgid deadline
    pgid="$(pgid_of "$pid" || true)"
    if [[ -z "$pgid" || "$pgid" == "$my_pgid" || "$pgid" -le 1 ]]; then
        pgid=""
    fi
    if [[ "$sig" == KILL ]]; then
        stop_forced=1
        if [[ -n "$pgid" ]]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
        kill -KILL "$pid" 2>/dev/null || true
    else
        kill -s "$sig" "$pid" 2>/dev/null || true
        deadline=$(($(now_ds) + timeout * 10))
        while alive "$pid" "$pat" && (($(now_ds) < deadline)); do
            sleep 0.05
        done
        if alive "$pid" "$pat"; then
            warn "$name (pid $pid) did not stop within ${timeout}s; killing it"
            stop_forced=1
            if [[ -n "$pgid" ]]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    deadline=$(($(now_ds) + 100))
    while (($(now_ds) < deadline)); do
        if ! alive "$pid" "$pat"; then
            [[ -n "$pgid" ]] || return 0
            group_alive "$pgid" || return 0
            # Leftovers of the group (children of a killed parent).
            if [[ "$sig" == KILL ]]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
        fi
        sleep 0.05
    done
    if alive "$pid" "$pat"; then
        warn "$name (pid $pid) is still running after SIGKILL"
        return 1
    fi
    return 0
}

# ------------------------------------------------------------- layout ----

cmd="${1:-}"
case "$cmd" in
    -h|--help|help) usage; exit 0 ;;
    "") usage >&2; exit 2 ;;
esac
[[ $# -eq 2 && -n "$2" ]] || { usage >&2; die "expected: $prog COMMAND DIR"; }
case "$cmd" in
    start|stop|status|destroy|start-cluster) ;;
    start-kafka|stop-kafka|restart-kafka|kill-kafka) ;;
    start-kafka[123]|stop-kafka[123]|restart-kafka[123]|kill-kafka[123]) ;;
    start-postgres|stop-postgres|restart-postgres|kill-postgres) ;;
    start-redis|stop-redis|restart-redis|kill-redis) ;;
    *) usage >&2; die "unknown command: $cmd" ;;
esac

if [[ "$cmd" == stop* || "$cmd" == kill-* || "$cmd" == status || "$cmd" == destroy ]] && [[ ! -d "$2" ]]; then
    # Nothing was ever started there.
    [[ "$cmd" == status ]] && { echo "postgres stopped"; echo "redis stopped"; echo "kafka stopped"; exit 3; }
    exit 0
fi
mkdir -p "$2" || die "cannot create $2"
DIR="$(cd "$2" && pwd -P)"

is_root=0
[[ "$(id -u)" == 0 ]] && is_root=1
if ((is_root)); then
    pg_user=postgres
    as_pg=(runuser -u postgres --)
else
    pg_user="$(id -un)"
    as_pg=()
fi

ports_dir="$DIR/ports"
redis_dir="$DIR/redis"
env_file="$DIR/services.env"

# The Kafka functions act on one broker, chosen by kafka_select: 0 is the
# single broker (DIR/kafka), 1..3 a broker of the cluster (DIR/kafkaN).
kafka_nodes=1           # 1 or 3; settled from DIR/kafka-nodes once locked
kafka_secure=0          # 1: SASL_SSL + ACLs; settled from DIR/kafka-secure
kafka_node=0
kafka_dir=""
kafka_pname=""          # its names under DIR/ports
kafka_cpname=""
kafka_select() {
    kafka_node="$1"
    if ((kafka_node == 0)); then
        kafka_dir="$DIR/kafka"; kafka_pname=kafka; kafka_cpname=kafka-controller
    else
        kafka_dir="$DIR/kafka$1"; kafka_pname="kafka$1"; kafka_cpname="kafka$1-controller"
    fi
}
kafka_select 0
kafka_node_ids() { if ((kafka_nodes == 1)); then echo 0; else echo 1 2 3; fi; }

# PostgreSQL's directory (may be a symlink to a private /tmp directory).
pg_root=""
pgdata=""
pgrun=""
pglog=""
resolve_pg_root() {
    if [[ -L "$DIR/pg" ]]; then
        pg_root="$(readlink -f "$DIR/pg")"
        [[ -d "$pg_root" ]] || die "$DIR/pg points to a missing directory ($pg_root)"
    elif [[ -d "$DIR/pg" ]]; then
        pg_root="$DIR/pg"
    else
        pg_root=""
    fi
    if [[ -n "$pg_root" ]]; then
        pgdata="$pg_root/data"
        pgrun="$pg_root/run"
        pglog="$pg_root/postgres.log"
    fi
}
resolve_pg_root

pg_bindir() {
    local d
    if [[ -n "${SLUICE_PG_BINDIR:-}" ]]; then
        echo "$SLUICE_PG_BINDIR"; return
    fi
    d="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1)"
    if [[ -n "$d" && -x "$d/postgres" ]]; then
        echo "$d"; return
    fi
    d="$(command -v postgres 2>/dev/null || true)"
    [[ -n "$d" ]] || die "PostgreSQL server binaries not found (run deploy/install-deps.sh)"
    dirname "$d"
}

# ------------------------------------------------------------- state ----

read_port() { # read_port NAME -> recorded port or empty
    local f="$ports_dir/$1"
    if [[ -f "$f" ]]; then cat "$f"; fi
}
# Atomic: the brokers of a cluster start in parallel and read each other's.
write_port() {
    mkdir -p "$ports_dir"
    echo "$2" >"$ports_dir/$1.tmp.$BASHPID"
    mv -f "$ports_dir/$1.tmp.$BASHPID" "$ports_dir/$1"
}

pg_pid() {
    [[ -n "$pgdata" && -f "$pgdata/postmaster.pid" ]] || return 0
    head -n1 "$pgdata/postmaster.pid" 2>/dev/null || true
}
pg_running() { local p; p="$(pg_pid)"; [[ -n "$p" ]] && alive "$p" "-D $pgdata"; }

redis_pid() { cat "$redis_dir/redis.pid" 2>/dev/null || true; }
redis_running() { local p; p="$(redis_pid)"; [[ -n "$p" ]] && alive "$p" "redis-server"; }

kafka_pid() { cat "$kafka_dir/kafka.pid" 2>/dev/null || true; }
kafka_running() { local p; p="$(kafka_pid)"; [[ -n "$p" ]] && alive "$p" "kafka.Kafka $kafka_dir/server.properties"; }
# Number of the cluster's brokers running now (0..3).
kafka_running_count() {
    local n c=0 keep="$kafka_node"
    for n in 1 2 3; do
        kafka_select "$n"
        if kafka_running; then c=$((c + 1)); fi
    done
    kafka_select "$keep"
    echo "$c"
}

# choose_port NAME ENVVAR RUNNING(0/1) STRICT(0/1): decide the port of a
# service that is about to start; prints it or "" (= allocate a new one).
choose_port() {
    local name="$1" envvar="$2" strict="$3" want rec
    want="${!envvar:-}"
    rec="$(read_port "$name")"
    if [[ -n "$want" ]]; then
        if ! [[ "$want" =~ ^[0-9]+$ ]] || ((want < 1 || want > 65535)); then
            die "$envvar=$want is not a port"
        fi
        port_listening "$want" && die "$envvar=$want: the port is already in use"
        echo "$want"
    elif [[ -n "$rec" ]]; then
        if port_listening "$rec"; then
            ((strict)) && die "$name: its port $rec is in use by another process"
            echo ""
        else
            echo "$rec"
        fi
    else
        echo ""
    fi
}

write_env() {
    local pgp rp kp kcp tmp brokers n
    local -a cluster_env=()
    pgp="$(read_port pg)"; rp="$(read_port redis)"
    local pgpid="" rpid="" kpid=""
    pg_running && pgpid="$(pg_pid)"
    redis_running && rpid="$(redis_pid)"
    if ((kafka_nodes == 1)); then
        kp="$(read_port kafka)"; kcp="$(read_port kafka-controller)"
        kafka_running && kpid="$(kafka_pid)"
        brokers="127.0.0.1:$kp"
    else
        local p c pid
        brokers=""
        cluster_env=("export SLUICE_KAFKA_NODES=3")
        for n in 1 2 3; do
            kafka_select "$n"
            p="$(read_port "$kafka_pname")"; c="$(read_port "$kafka_cpname")"
            pid=""
            kafka_running && pid="$(kafka_pid)"
            brokers+="${brokers:+,}127.0.0.1:$p"
            cluster_env+=("export SLUICE_KAFKA${n}_PORT=$p"
                          "export SLUICE_KAFKA${n}_CONTROLLER_PORT=$c"
                          "export SLUICE_KAFKA${n}_PID=$pid")
            # The single-broker names point at broker 1.
            if ((n == 1)); then kp="$p"; kcp="$c"; kpid="$pid"; fi
        done
        kafka_select 0
    fi
    tmp="$env_file.tmp.$$"
    {
        echo "# Written by deploy/services.sh; source it: . $(printf '%q' "$env_file")"
        printf 'export SLUICE_SERVICES_DIR=%q\n' "$DIR"
        printf 'export SLUICE_POSTGRES_DSN=%q\n' "$(pg_dsn "$pg_user" sluice "$pgp")"
        printf 'export SLUICE_PG_WORKER_DSN=%q\n' "$(pg_dsn sluice_worker sluice "$pgp")"
        printf 'export SLUICE_PG_AGENT_DSN=%q\n' "$(pg_dsn sluice_agent sluice "$pgp")"
        printf 'export SLUICE_PG_LOOKUP_DSN=%q\n' "$(pg_dsn sluice_lookup sluice "$pgp")"
        echo "export SLUICE_PG_TLS=$pg_tls"
        if ((pg_tls)); then printf 'export SLUICE_PG_CA=%q\n' "$pg_tls_dir/ca.crt"; else echo "export SLUICE_PG_CA="; fi
        echo "export SLUICE_REDIS_URL=redis://127.0.0.1:$rp/0"
        echo "export SLUICE_KAFKA_BROKERS=$brokers"
        echo "export SLUICE_PG_PORT=$pgp"
        echo "export SLUICE_PG_USER=$pg_user"
        printf 'export SLUICE_PG_SOCKET_DIR=%q\n' "$pgrun"
        echo "export SLUICE_REDIS_PORT=$rp"
        echo "export SLUICE_KAFKA_PORT=$kp"
        echo "export SLUICE_KAFKA_CONTROLLER_PORT=$kcp"
        echo "export SLUICE_PG_PID=$pgpid"
        echo "export SLUICE_REDIS_PID=$rpid"
        echo "export SLUICE_KAFKA_PID=$kpid"
        if ((${#cluster_env[@]})); then printf '%s\n' "${cluster_env[@]}"; fi
        if ((kafka_secure)); then
            echo "export SLUICE_KAFKA_SECURE=1"
            printf 'export SLUICE_KAFKA_CA=%q\n' "$DIR/kafka/secure/ca.pem"
            printf 'export SLUICE_KAFKA_SECRETS=%q\n' "$DIR/kafka/secure"
            printf 'export SLUICE_KAFKA_ADMIN_CONFIG=%q\n' "$DIR/kafka/secure/admin.properties"
        fi
    } >"$tmp"
    mv -f "$tmp" "$env_file"
}

# ---------------------------------------------------------- postgres ----

# Secure mode (SLUICE_PG_TLS=1): the clients' side lives in DIR/pg-tls,
# owned by whoever runs services.sh; the server's certificate and key in
# PG_ROOT/tls, owned by the server's user.
pg_tls_dir="$DIR/pg-tls"
pg_tls=0
if [[ -d "$pg_tls_dir" ]]; then
    pg_tls=1
elif [[ "${SLUICE_PG_TLS:-0}" == 1 ]]; then
    if [[ -n "$pgdata" && -s "$pgdata/PG_VERSION" ]] && [[ "$cmd" == start* ]]; then
        die "$DIR holds a plain PostgreSQL, not a TLS one (SLUICE_PG_TLS=1): destroy it first"
    fi
    [[ "$cmd" == start* ]] && pg_tls=1
elif [[ -n "${SLUICE_PG_TLS:-}" && "$SLUICE_PG_TLS" != 0 ]]; then
    die "SLUICE_PG_TLS must be 0 or 1, not $SLUICE_PG_TLS"
fi

pg_uri_quote() {
    python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe="/"))' "$1"
}

# pg_dsn USER DB [PORT]: the URI a client of the cluster uses; in secure
# mode it verifies the server against the test CA and finds its password in
# the passfile, so no secret is in the DSN.
pg_dsn() {
    local port="${3:-$(read_port pg)}"
    local dsn="postgresql://$1@127.0.0.1:$port/$2"
    if ((pg_tls)); then
        dsn+="?sslmode=verify-full&sslrootcert=$(pg_uri_quote "$pg_tls_dir/ca.crt")"
        dsn+="&passfile=$(pg_uri_quote "$pg_tls_dir/pgpass")"
    fi
    echo "$dsn"
}

# The test CA (once per DIR), the passwords and the passfile (once), and
# the server's certificate (whenever PG_ROOT has none), for 127.0.0.1 and
# localhost so that verify-full holds for either name.
pg_tls_prepare() {
    command -v openssl >/dev/null 2>&1 || die "openssl not found (run deploy/install-deps.sh)"
    local t="$pg_tls_dir" st="$pg_root/tls" r
    mkdir -p -m 700 "$t" "$t/secrets"
    for r in "$pg_user" sluice_worker sluice_agent sluice_lookup; do
        if [[ ! -s "$t/secrets/$r" ]]; then
            (umask 077 && openssl rand -hex 24 >"$t/secrets/$r") || die "cannot make a password"
        fi
    done
    if [[ ! -s "$t/pgpass" ]]; then
        (
            umask 077
            for r in "$pg_user" sluice_worker sluice_agent sluice_lookup; do
                echo "127.0.0.1:*:*:$r:$(cat "$t/secrets/$r")"
                echo "localhost:*:*:$r:$(cat "$t/secrets/$r")"
            done >"$t/pgpass.tmp"
        ) || die "cannot write $t/pgpass"
        mv -f "$t/pgpass.tmp" "$t/pgpass"
    fi
    if [[ ! -s "$st/server.crt" ]]; then
        mkdir -p -m 700 "$st"
        "$repo/deploy/testca.sh" "$t" server DNS:localhost IP:127.0.0.1 \
            || die "cannot make the test CA or the server certificate"
        (umask 077 && cp "$t/server.crt" "$t/server.key" "$st/") || die "cannot copy the server certificate"
        if ((is_root)); then chown -R postgres:postgres "$st"; fi
    fi
}

# Secure mode's pg_hba.conf: over TCP TLS and a password, for everyone; on
# the private socket the owner alone, as its OS user (peer).
pg_tls_hba() {
    cat >"$pgdata/pg_hba.conf" <<HBA
# Written by deploy/services.sh (SLUICE_PG_TLS=1): no plain TCP at all.
local    all  $pg_user                 peer
hostssl  all  all       127.0.0.1/32   scram-sha-256
HBA
    if ((is_root)); then chown postgres:postgres "$pgdata/pg_hba.conf"; fi
}

pg_prepare() {
    if [[ -z "$pg_root" ]]; then
        if ((is_root)); then
            if ! id -u postgres >/dev/null 2>&1; then
                useradd --system --user-group --home-dir /var/lib/postgresql \
                    --shell /usr/sbin/nologin postgres \
                    || die "cannot create the postgres system user"
            fi
            mkdir "$DIR/pg"
            chown postgres:postgres "$DIR/pg"
            chmod 700 "$DIR/pg"
            if ! runuser -u postgres -- test -w "$DIR/pg" 2>/dev/null; then
                # The postgres user cannot reach DIR: keep the cluster in a
                # private directory it can reach, linked from DIR/pg.
                rmdir "$DIR/pg"
                local alt
                alt="$(mktemp -d "${SLUICE_PG_FALLBACK_DIR:-/tmp}/sluice-pg.XXXXXX")"
                chown postgres:postgres "$alt"
                chmod 700 "$alt"
                runuser -u postgres -- test -w "$alt" \
                    || die "the postgres user cannot write $alt either"
                ln -s "$alt" "$DIR/pg"
            fi
        else
            mkdir -m 700 "$DIR/pg"
        fi
        resolve_pg_root
    fi
    if ((is_root)) && ! runuser -u postgres -- test -w "$pg_root" 2>/dev/null; then
        die "the postgres user cannot write $pg_root (was DIR moved or created by another user?)"
    fi
    if ((pg_tls)); then pg_tls_prepare; fi
    if [[ ! -s "$pgdata/PG_VERSION" ]]; then
        local bindir
        local -a auth=(--auth=trust)
        bindir="$(pg_bindir)"
        rm -rf "$pgdata"
        if ((pg_tls)); then
            # The owner's password from a file the server's user can read,
            # gone once initdb has it.
            install -m 600 "$pg_tls_dir/secrets/$pg_user" "$pg_root/owner.pw"
            if ((is_root)); then chown postgres:postgres "$pg_root/owner.pw"; fi
            auth=(--auth-local=peer --auth-host=scram-sha-256 --pwfile="$pg_root/owner.pw")
        fi
        if ! (cd / && "${as_pg[@]}" "$bindir/initdb" -D "$pgdata" -U "$pg_user" "${auth[@]}" \
                -E UTF8 --locale=C --no-sync --no-instructions) >"$pg_root/initdb.log" 2>&1 9>&-; then
            rm -f "$pg_root/owner.pw"
            tail_log "$pg_root/initdb.log"
            die "initdb failed"
        fi
        rm -f "$pg_root/owner.pw"
        if ((pg_tls)); then pg_tls_hba; fi
    fi
    "${as_pg[@]}" mkdir -p -m 700 "$pgrun"
}

pg_launch_pid=""
pg_launch() { # pg_launch PORT (does not wait)
    local port="$1" bindir p
    bindir="$(pg_bindir)"
    # A postmaster.pid left by a killed server would make postgres refuse
    # to start if its pid got recycled; it is stale when not ours.
    p="$(pg_pid)"
    if [[ -n "$p" ]] && ! alive "$p" "-D $pgdata"; then
        rm -f "$pgdata/postmaster.pid"
    fi
    # Same for the socket lock files (postgres takes a zombie for alive).
    local lock
    for lock in "$pgrun"/.s.PGSQL.*.lock; do
        [[ -f "$lock" ]] || continue
        p="$(head -n1 "$lock" 2>/dev/null || true)"
        if ! alive "$p" postgres; then
            rm -f "$lock" "${lock%.lock}"
        fi
    done
    write_port pg "$port"
    local -a tls=()
    if ((pg_tls)); then
        tls=(-c ssl=on -c "ssl_cert_file=$pg_root/tls/server.crt" -c "ssl_key_file=$pg_root/tls/server.key"
             -c ssl_min_protocol_version=TLSv1.2 -c password_encryption=scram-sha-256)
    fi
    (cd / && close_inherited_fds && exec setsid "${as_pg[@]}" "$bindir/postgres" -D "$pgdata" -p "$port" -k "$pgrun" \
        -c listen_addresses=127.0.0.1 -c logging_collector=off "${tls[@]}" \
        </dev/null >>"$pglog" 2>&1 9>&-) &
    pg_launch_pid=$!
    disown "$pg_launch_pid"  # no "Killed" notice if it is stopped later
}

pg_psql() { # pg_psql DB SQL
    psql -X -q -v ON_ERROR_STOP=1 -d "$(pg_dsn "$pg_user" "$1")" -tA -c "$2"
}

pg_wait() {
    local port deadline
    port="$(read_port pg)"
    deadline=$(($(now_ds) + start_timeout * 10))
    until pg_isready -q -h 127.0.0.1 -p "$port" -d postgres -U "$pg_user" -t 1 2>/dev/null; do
        if [[ -n "$pg_launch_pid" ]] && ! alive "$pg_launch_pid" "-D $pgdata" && ! pg_running; then
            tail_log "$pglog"
            die "postgres exited during start-up (port $port)"
        fi
        if (($(now_ds) >= deadline)); then
            tail_log "$pglog"
            die "postgres not ready on 127.0.0.1:$port after ${start_timeout}s"
        fi
        sleep 0.05
    done
    local exists
    exists="$(pg_psql postgres "SELECT 1 FROM pg_database WHERE datname = 'sluice'")" \
        || die "cannot query postgres on port $port"
    if [[ "$exists" != 1 ]]; then
        pg_psql postgres "CREATE DATABASE sluice" >/dev/null || die "cannot create database sluice"
    fi
    # sluice's roles first: the migrations grant them and refuse to run
    # without them. Passwords only in secure mode (plain mode trusts).
    local -a pw=()
    if ((pg_tls)); then pw=(--password-dir "$pg_tls_dir/secrets"); fi
    "$repo/deploy/roles.sh" "${pw[@]}" "$(pg_dsn "$pg_user" sluice)" 9>&- \
        || die "sluice's roles not created"
    "$repo/deploy/migrate.sh" "$(pg_dsn "$pg_user" sluice)" 9>&- \
        || die "migrations failed"
}

pg_stop() { # pg_stop [KILL]
    local p
    p="$(pg_pid)"
    [[ -n "$p" ]] || return 0
    if [[ "${1:-}" == KILL ]]; then
        stop_pid postgres "$p" "-D $pgdata" KILL 0
    else
        # SIGINT = fast shutdown (SIGTERM would wait for clients to leave).
        stop_pid postgres "$p" "-D $pgdata" INT
    fi
}

# ------------------------------------------------------------- redis ----

redis_launch() { # redis_launch PORT (daemonizes; does not wait)
    local port="$1" p
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found (run deploy/install-deps.sh)"
    mkdir -p "$redis_dir"
    p="$(redis_pid)"
    if [[ -n "$p" ]] && ! alive "$p" redis-server; then rm -f "$redis_dir/redis.pid"; fi
    write_port redis "$port"
    cat >"$redis_dir/redis.conf" <<EOF
# Written by deploy/services.sh
bind 127.0.0.1
port $port
protected-mode yes
daemonize yes
pidfile $redis_dir/redis.pid
logfile $redis_dir/redis.log
dir $redis_dir
save ""
appendonly no
databases 16
EOF
    if ! (cd / && close_inherited_fds && exec redis-server "$redis_dir/redis.conf") </dev/null >>"$redis_dir/redis.log" 2>&1 9>&-; then
        tail_log "$redis_dir/redis.log"
        die "redis-server failed to start"
    fi
}

redis_wait() {
    local port deadline
    port="$(read_port redis)"
    deadline=$(($(now_ds) + start_timeout * 10))
    until [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]; do
        if (($(now_ds) >= deadline)); then
            tail_log "$redis_dir/redis.log"
            die "redis not ready on 127.0.0.1:$port after ${start_timeout}s"
        fi
        sleep 0.05
    done
    redis_running || { tail_log "$redis_dir/redis.log"; die "redis answers on $port but its pid file is wrong"; }
}

redis_stop() {
    local p
    p="$(redis_pid)"
    [[ -n "$p" ]] || return 0
    if [[ "${1:-}" == KILL ]]; then
        stop_pid redis "$p" redis-server KILL 0
    else
        stop_pid redis "$p" redis-server TERM
    fi
    if ! alive "$p" redis-server; then rm -f "$redis_dir/redis.pid"; fi
}

# ------------------------------------------------------------- kafka ----

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    else
        command -v java 2>/dev/null || die "java not found (run deploy/install-deps.sh)"
    fi
}

kafka_write_config() { # PORT CONTROLLER_PORT
    local port="$1" cport="$2" id=1 voters rf=1 isr=1 n
    voters="1@127.0.0.1:$cport"
    if ((kafka_node)); then
        # A broker of the cluster: every broker is also one of the three
        # voters, whose controller ports are all fixed before any starts.
        id="$kafka_node"; rf=3; isr=2; voters=""
        for n in 1 2 3; do
            voters+="${voters:+,}$n@127.0.0.1:$(read_port "kafka$n-controller")"
        done
    fi
    local lname=PLAINTEXT
    ((kafka_secure)) && lname=SASL_SSL
    cat >"$kafka_dir/server.properties" <<EOF
# Written by deploy/services.sh (rewritten at each start)
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=$lname://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$lname://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=$lname
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$lname:$lname
log.dirs=$kafka_dir/data
num.partitions=4
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
# After a crash (kill-kafka) the restarted controller keeps the old broker
# incarnation registered until its session times out; keep that short.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
num.network.threads=2
num.io.threads=4
EOF
    if ((kafka_node)); then
        cat >>"$kafka_dir/server.properties" <<EOF
# Three brokers share a small machine: fewer internal partitions to
# create and replicate (the defaults are 50 each).
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=4
EOF
    fi
    if ((kafka_secure)); then kafka_secure_config >>"$kafka_dir/server.properties"; fi
    cat >"$kafka_dir/log4j.properties" <<EOF
# Written by deploy/services.sh
log4j.rootLogger=${SLUICE_KAFKA_LOG_LEVEL:-WARN}, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$kafka_dir/kafka.log
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
# The start-up and shutdown lines services.sh waits for.
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.Kafka=INFO
EOF
}

kafka_log_offset=0
kafka_launcher_pid=""
kafka_cds_used=""

# Class-data sharing: the first broker run of a JDK + jar set dumps the
# classes it loaded into a temporary archive when it exits; a graceful stop
# validates it and moves it into the jar cache, and later starts map it,
# which halves the JVM's start-up time. SLUICE_KAFKA_CDS=0 turns this off.
kafka_cds_key() { # kafka_cds_key JAVA LIBS
    local real
    real="$(readlink -f "$1")"
    { echo "$real"; stat -c '%s %Y' "$real"; cat "$2/.complete" 2>/dev/null; } \
        | sha256sum | cut -c1-16
}

# Finish (or drop) the archive dumped by a broker that has exited.
kafka_cds_settle() { # kafka_cds_settle GRACEFUL(0/1)
    local pending="$kafka_dir/cds.pending" tmp="" final="" libs="" java
    [[ -f "$pending" ]] || return 0
    { read -r tmp; read -r final; read -r libs; } <"$pending" || true
    rm -f "$pending"
    [[ -n "$tmp" && "$tmp" == *.jsa.tmp.* ]] || return 0
    java="$(java_bin)"
    # A truncated archive crashes the JVM, so try it before keeping it.
    if [[ "$1" == 1 && -s "$tmp" && -n "$final" ]] \
            && ("$java" -XX:SharedArchiveFile="$tmp" -Xshare:on -cp "$libs/*" -version) >/dev/null 2>&1; then
        mv -f "$tmp" "$final" || rm -f "$tmp"
    else
        rm -f "$tmp"
    fi
}

# kafka_cluster_id FILE: a new KRaft cluster id into FILE unless it has one.
kafka_cluster_id() {
    [[ -s "$1" ]] && return 0
    python3 -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"):
        print(s); break' >"$1"
}

# kafka_launch PORT CONTROLLER_PORT LIBS: format storage once, then start the
# broker in the background (does not wait for readiness).
kafka_launch() {
    local port="$1" cport="$2" libs="$3" java p heap="-Xmx512m -Xms512m" cid_file
    java="$(java_bin)"
    mkdir -p "$kafka_dir/data"
    p="$(kafka_pid)"
    if [[ -n "$p" ]] && ! alive "$p" "kafka.Kafka $kafka_dir/server.properties"; then
        rm -f "$kafka_dir/kafka.pid"
    fi
    write_port "$kafka_pname" "$port"
    write_port "$kafka_cpname" "$cport"
    local -a scram=()
    if ((kafka_secure)); then
        kafka_secure_prepare
        mapfile -d '' scram < <(kafka_secure_scram_args)
    fi
    kafka_write_config "$port" "$cport"
    cid_file="$kafka_dir/cluster.id"
    local -a jit=()
    if ((kafka_node)); then
        # Three JVMs on two cores: smaller heaps, and only the quick JIT
        # compiler (C2 spends a core per broker at start-up; a cluster
        # started under load came up in 28 s instead of 36-46 s). One id
        # for all brokers, written before any of them is launched.
        heap="-Xmx384m -Xms384m"
        jit=(-XX:TieredStopAtLevel=1)
        cid_file="$DIR/kafka-cluster.id"
    fi
    kafka_log_offset=0
    [[ -f "$kafka_dir/kafka.log" ]] && kafka_log_offset="$(stat -c %s "$kafka_dir/kafka.log")"
    # A dump left by a broker that was killed is incomplete.
    kafka_cds_settle 0
    local -a cds=()
    kafka_cds_used=""
    if [[ "${SLUICE_KAFKA_CDS:-1}" != 0 ]]; then
        local cds_dir key
        cds_dir="$(dirname "$libs")/cds"
        key="$(kafka_cds_key "$java" "$libs")"
        if [[ -s "$cds_dir/$key.jsa" ]]; then
            kafka_cds_used="$cds_dir/$key.jsa"
            cds=("-XX:SharedArchiveFile=$kafka_cds_used")
        elif mkdir -p "$cds_dir" 2>/dev/null; then
            local tmpjsa="$cds_dir/$key.jsa.tmp.$$.$RANDOM"
            cds=("-XX:ArchiveClassesAtExit=$tmpjsa")
            printf '%s\n' "$tmpjsa" "$cds_dir/$key.jsa" "$libs" >"$kafka_dir/cds.pending"
        fi
    fi
    # shellcheck disable=SC2206 # SLUICE_KAFKA_HEAP holds several flags
    local -a jvm=(
        ${SLUICE_KAFKA_HEAP:-$heap} "${jit[@]}"
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
        "-Dlog4j.configuration=file:$kafka_dir/log4j.properties"
        "-Dkafka.logs.dir=$kafka_dir"
        "-XX:ErrorFile=$kafka_dir/hs_err_%p.log"
        -cp "$libs/*"
    )
    # Runs in the background so PostgreSQL's initdb can proceed meanwhile.
    # A cluster formats three brokers at once: their format JVMs map the
    # class archive too (a JVM start-up saved each).
    local -a fmt_cds=()
    if ((kafka_node)) && [[ -n "$kafka_cds_used" ]]; then fmt_cds=("${cds[@]}"); fi
    (
        if [[ ! -f "$kafka_dir/data/meta.properties" ]]; then
            kafka_cluster_id "$cid_file"
            if ! "$java" "${jvm[@]}" "${fmt_cds[@]}" kafka.tools.StorageTool format \
                    -t "$(cat "$cid_file")" -c "$kafka_dir/server.properties" \
                    "${scram[@]}" --ignore-formatted </dev/null >"$kafka_dir/format.log" 2>&1; then
                tail_log "$kafka_dir/format.log" "$kafka_dir/kafka.log"
                echo "$prog: error: kafka storage format failed" >&2
                exit 1
            fi
        fi
        (cd / && close_inherited_fds && exec setsid "$java" "${jvm[@]}" "${cds[@]}" kafka.Kafka "$kafka_dir/server.properties" \
            </dev/null >"$kafka_dir/kafka.out" 2>&1) &
        echo $! >"$kafka_dir/kafka.pid"
    ) 9>&- &
    kafka_launcher_pid=$!
}

# kafka_wait [BROKERS]: wait until the selected broker is up and its
# metadata lists at least BROKERS brokers (default 1).
kafka_wait() {
    local port deadline p name="$kafka_pname" min_brokers="${1:-1}"
    port="$(read_port "$kafka_pname")"
    if [[ -n "$kafka_launcher_pid" ]]; then
        wait "$kafka_launcher_pid" || die "$name could not be launched"
        kafka_launcher_pid=""
    fi
    p="$(kafka_pid)"
    deadline=$(($(now_ds) + start_timeout * 10))
    while :; do
        if ! alive "$p" "kafka.Kafka $kafka_dir/server.properties"; then
            # On a loaded machine the launcher's child may not have
            # exec'd java yet: its pid runs under another command line.
            # Or it was caught in the middle of an exec (an empty command
            # line) and is java by now: look again before giving up.
            if { starting "$p" || alive "$p" "kafka.Kafka $kafka_dir/server.properties"; } \
                    && (($(now_ds) < deadline)); then
                sleep 0.1
                continue
            fi
            if [[ -n "$kafka_cds_used" ]] && grep -qs 'fatal error has been detected' "$kafka_dir/kafka.out"; then
                # The JVM crashed; maybe the class archive is at fault: drop
                # it and try once more without.
                warn "$name exited at start-up; retrying without the class archive $kafka_cds_used"
                rm -f "$kafka_cds_used"
                kafka_launch "$port" "$(read_port "$kafka_cpname")" "$(dirname "$(dirname "$kafka_cds_used")")/libs"
                kafka_cds_used=""
                wait "$kafka_launcher_pid" || die "$name could not be launched"
                kafka_launcher_pid=""
                p="$(kafka_pid)"
                continue
            fi
            tail_log "$kafka_dir/kafka.log" "$kafka_dir/kafka.out"
            die "$name exited during start-up (port $port)"
        fi
        if tail -c "+$((kafka_log_offset + 1))" "$kafka_dir/kafka.log" 2>/dev/null \
                | grep -q 'Kafka Server started' && port_listening "$port"; then
            break
        fi
        if (($(now_ds) >= deadline)); then
            tail_log "$kafka_dir/kafka.log" "$kafka_dir/kafka.out"
            die "$name not ready on 127.0.0.1:$port after ${start_timeout}s"
        fi
        sleep 0.05
    done
    # The secure broker speaks only SASL_SSL: its round trip is the admin's
    # topic creation (kafka_secure_setup).
    ((kafka_secure)) && return 0
    # Check that the broker answers a real Metadata request and lists itself
    # (and, in a cluster, the brokers expected to run): a raw protocol round
    # trip, no client library needed.
    local py="$repo/.venv/bin/python" left
    [[ -x "$py" ]] || py=python3
    left=$(((deadline - $(now_ds)) / 10))
    ((left < 5)) && left=5
    if ! "$py" - "127.0.0.1:$port" "$left" "$min_brokers" <<'EOF' 2>"$kafka_dir/probe.log"; then
import socket, struct, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.time() + float(sys.argv[2])
want = int(sys.argv[3])
def req(sock, api_key, ver, corr, body=b""):
    cid = b"sluice-probe"
    msg = struct.pack(">hhih", api_key, ver, corr, len(cid)) + cid + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    def recvn(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
        return buf
    size, = struct.unpack(">i", recvn(4))
    data = recvn(size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise OSError("bad correlation id")
    return data[4:]
last = None
while time.time() < deadline:
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.settimeout(2)
            # Metadata v0 with an empty topic list: brokers + all topics.
            r = req(s, 3, 0, 1, struct.pack(">i", 0))
            nbrokers, = struct.unpack(">i", r[:4])
            if nbrokers >= want:
                sys.exit(0)
            last = "%d brokers in metadata, expected %d" % (nbrokers, want)
    except OSError as e:
        last = str(e)
    time.sleep(0.1)
sys.exit("kafka metadata probe failed: %s" % last)
EOF
        tail_log "$kafka_dir/probe.log" "$kafka_dir/kafka.log"
        die "$name on 127.0.0.1:$port does not answer metadata requests"
    fi
}

kafka_stop() {
    local p
    p="$(kafka_pid)"
    if [[ -z "$p" ]]; then
        kafka_cds_settle 0
        return 0
    fi
    stop_forced=0
    if [[ "${1:-}" == KILL ]]; then
        stop_pid "$kafka_pname" "$p" "kafka.Kafka $kafka_dir/server.properties" KILL 0
    else
        stop_pid "$kafka_pname" "$p" "kafka.Kafka $kafka_dir/server.properties" TERM
    fi
    if ! alive "$p" "kafka.Kafka $kafka_dir/server.properties"; then
        rm -f "$kafka_dir/kafka.pid"
        if ((stop_forced)); then kafka_cds_settle 0; else kafka_cds_settle 1; fi
    fi
}

# ------------------------------------------------------- kafka secure ----

# The secure broker (kafka_secure=1): its CA, certificate, passwords and
# client properties live in DIR/kafka/secure (mode 0700), made once and
# kept across restarts (the SCRAM users are in the formatted storage).
kafka_secure_users=(admin sluice_ingest sluice_worker)
kafka_secure_dir() { echo "$DIR/kafka/secure"; }

kafka_secure_password() { cat "$(kafka_secure_dir)/$1.password"; }

kafka_secure_prepare() {
    local sd u f
    sd="$(kafka_secure_dir)"
    command -v openssl >/dev/null 2>&1 || die "openssl not found (needed by SLUICE_KAFKA_SECURE=1)"
    (umask 077 && mkdir -p "$sd") || die "cannot create $sd"
    chmod 700 "$sd"
    for u in "${kafka_secure_users[@]}" keystore; do
        f="$sd/$u.password"
        [[ -s "$f" ]] && continue
        (umask 077 && openssl rand -hex 24 >"$f.tmp" && mv -f "$f.tmp" "$f") \
            || die "cannot write $f"
    done
    if [[ ! -s "$sd/broker.p12" ]]; then
        (
            cd "$sd" && umask 077
            "$repo/deploy/testca.sh" . broker DNS:localhost IP:127.0.0.1 &&
            cp ca.crt ca.pem &&
            openssl pkcs12 -export -name broker -inkey broker.key -in broker.crt -certfile ca.pem \
                -passout file:keystore.password -out broker.p12.tmp &&
            mv -f broker.p12.tmp broker.p12
        ) >"$sd/openssl.log" 2>&1 || { tail_log "$sd/openssl.log"; die "cannot make the test CA and broker certificate"; }
        chmod 644 "$sd/ca.pem"
    fi
    (
        umask 077
        cat >"$sd/admin.properties" <<EOF
# Written by deploy/services.sh: the admin's client settings
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(kafka_secure_password admin)";
ssl.truststore.type=PEM
ssl.truststore.location=$sd/ca.pem
EOF
    ) || die "cannot write $sd/admin.properties"
}

# The secure listener's part of server.properties (a 0600 file: it holds
# the admin's password and the keystore's).
kafka_secure_config() {
    local sd
    sd="$(kafka_secure_dir)"
    chmod 600 "$kafka_dir/server.properties"
    cat <<EOF
# SASL_SSL + SCRAM-SHA-512, ACLs with nothing allowed by default
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(kafka_secure_password admin)";
ssl.keystore.type=PKCS12
ssl.keystore.location=$sd/broker.p12
ssl.keystore.password=$(kafka_secure_password keystore)
ssl.key.password=$(kafka_secure_password keystore)
ssl.truststore.type=PEM
ssl.truststore.location=$sd/ca.pem
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
# ANONYMOUS: the broker's own registration on the PLAINTEXT loopback
# controller listener (docs/security.md).
super.users=User:admin;User:ANONYMOUS
EOF
}

# The format tool's --add-scram arguments, one per user, NUL-separated.
kafka_secure_scram_args() {
    local u
    for u in "${kafka_secure_users[@]}"; do
        printf '%s\0' --add-scram "SCRAM-SHA-512=[name=$u,password=$(kafka_secure_password "$u")]"
    done
}

# The kafka-acls.sh lines of docs/security.md (between the kafka-acls
# markers), one a line: the one list of sluice's rights.
kafka_secure_acl_lines() {
    awk '/<!-- kafka-acls:begin -->/ { on = 1; next } /<!-- kafka-acls:end -->/ { on = 0 }
         on && /^kafka-acls\.sh / { print }' "$repo/docs/security.md"
}

# kafka_secure_setup LIBS: as admin, create sluice's topics and apply the
# ACLs of docs/security.md (once per broker; again when the list changed).
kafka_secure_setup() {
    local libs="$1" sd java port stamp want line arg t
    sd="$(kafka_secure_dir)"
    java="$(java_bin)"
    port="$(read_port kafka)"
    stamp="$sd/acls.applied"
    [[ -n "$(kafka_secure_acl_lines)" ]] || die "no kafka-acls.sh lines in docs/security.md"
    want="$(kafka_secure_acl_lines | sha256sum | cut -c1-16)"
    [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && return 0
    cat >"$sd/tools-log4j.properties" <<EOF
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%p %m (%c)%n
EOF
    local -a tool=("$java" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC
        "-Dlog4j.configuration=file:$sd/tools-log4j.properties" -cp "$libs/*")
    for t in sluice.events sluice.events.dlq; do
        "${tool[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
            --command-config "$sd/admin.properties" --create --if-not-exists --topic "$t" \
            --partitions 4 --replication-factor 1 </dev/null >>"$sd/setup.log" 2>&1 9>&- \
            || { tail_log "$sd/setup.log"; die "cannot create topic $t on the secure broker"; }
    done
    local -a args real
    while IFS= read -r line; do
        # Words only, never eval: the file is data.
        read -r -a args <<<"$line"
        real=()
        for arg in "${args[@]:1}"; do
            case "$arg" in
                '$BOOTSTRAP') real+=("127.0.0.1:$port") ;;
                '$ADMIN_CONFIG') real+=("$sd/admin.properties") ;;
                *) real+=("$arg") ;;
            esac
        done
        echo "+ $line" >>"$sd/setup.log"
        "${tool[@]}" kafka.admin.AclCommand "${real[@]}" </dev/null >>"$sd/setup.log" 2>&1 9>&- \
            || { tail_log "$sd/setup.log"; die "cannot apply: $line"; }
    done < <(kafka_secure_acl_lines)
    echo "$want" >"$stamp"
}

# ------------------------------------------------------ kafka cluster ----

# Background jobs of start_services, one per broker of the cluster: each
# launches its broker (unless it runs) and waits until it is ready.
cluster_jobs=()

# cluster_ports NODE...: record the ports of the cluster's brokers, keeping
# those recorded (clients and the other voters know them, so a broker that
# starts again must get them back) and allocating the missing ones; every
# broker names all three controllers, so those are settled for all.
cluster_ports() {
    local n name x f
    local -a todo=() excl=() fresh=()
    if [[ -n "${KAFKA_PORT:-}${KAFKA_CONTROLLER_PORT:-}" ]]; then
        die "KAFKA_PORT and KAFKA_CONTROLLER_PORT apply to a single broker, not to a cluster"
    fi
    for f in "$ports_dir"/*; do
        [[ -f "$f" ]] && excl+=("$(cat "$f")")
    done
    for n in 1 2 3; do
        for name in "kafka$n" "kafka$n-controller"; do
            x="$(read_port "$name")"
            if [[ -z "$x" ]]; then
                todo+=("$name")
            elif [[ " $* " == *" $n "* ]] && port_listening "$x"; then
                kafka_select "$n"
                kafka_running || die "$name: its port $x is in use by another process"
            fi
        done
    done
    kafka_select 0
    ((${#todo[@]})) || return 0
    read -r -a fresh <<<"$(new_ports "${#todo[@]}" "${excl[@]}")" || die "cannot find free ports"
    ((${#fresh[@]} == ${#todo[@]})) || die "cannot find free ports"
    for n in "${!todo[@]}"; do
        write_port "${todo[$n]}" "${fresh[$n]}"
    done
}

# cluster_launch LIBS NODE...: a background job per broker named; each
# launches it if it is not running, then waits until it is ready and its
# metadata lists every broker that should be running by then.
cluster_launch() {
    local libs="$1" n expect
    shift
    echo 3 >"$DIR/kafka-nodes"
    kafka_cluster_id "$DIR/kafka-cluster.id"
    expect="$(kafka_running_count)"
    for n in "$@"; do
        kafka_select "$n"
        if ! kafka_running; then expect=$((expect + 1)); fi
    done
    for n in "$@"; do
        kafka_select "$n"
        if ! kafka_running; then launched+=("kafka$n"); fi
        (
            if ! kafka_running; then
                mkdir -p "$kafka_dir"
                kafka_launch "$(read_port "$kafka_pname")" "$(read_port "$kafka_cpname")" "$libs"
            fi
            kafka_wait "$expect"
        ) &
        cluster_jobs+=($!)
    done
    kafka_select 0
}

cluster_wait() {
    local j rc=0
    for j in "${cluster_jobs[@]}"; do
        wait "$j" || rc=1
    done
    cluster_jobs=()
    ((rc == 0)) || die "the Kafka cluster did not start (see above)"
}

# -------------------------------------------------------- operations ----

# start_services SVC...: start those of the named services that are not
# running, in parallel, then wait for them; STRICT ports when only one
# service is (re)started, so clients find it where it was.
start_services() {
    local strict=0 svc
    (($# == 1)) && strict=1
    local want_pg=0 want_redis=0 want_kafka=0
    local -a nodes=()       # the cluster's brokers named
    for svc in "$@"; do
        case "$svc" in
            postgres) pg_running || want_pg=1 ;;
            redis) redis_running || want_redis=1 ;;
            kafka)
                if ((kafka_nodes == 1)); then kafka_running || want_kafka=1; else nodes+=(1 2 3); fi
                ;;
            kafka[123]) nodes+=("${svc#kafka}") ;;
        esac
    done
    if ((${#nodes[@]})); then cluster_ports "${nodes[@]}"; fi
    # Sanity: a fixed port asked for a service that already runs elsewhere.
    if [[ -n "${PG_PORT:-}" ]] && pg_running && [[ "$PG_PORT" != "$(read_port pg)" ]]; then
        die "postgres already runs on port $(read_port pg), not PG_PORT=$PG_PORT"
    fi
    if [[ -n "${REDIS_PORT:-}" ]] && redis_running && [[ "$REDIS_PORT" != "$(read_port redis)" ]]; then
        die "redis already runs on port $(read_port redis), not REDIS_PORT=$REDIS_PORT"
    fi
    if [[ -n "${KAFKA_PORT:-}" ]] && kafka_running && [[ "$KAFKA_PORT" != "$(read_port kafka)" ]]; then
        die "kafka already runs on port $(read_port kafka), not KAFKA_PORT=$KAFKA_PORT"
    fi

    local pgp="" rp="" kp="" kcp="" need=0 libs=""
    if ((want_pg)); then pgp="$(choose_port pg PG_PORT "$strict")"; [[ -n "$pgp" ]] || need=$((need + 1)); fi
    if ((want_redis)); then rp="$(choose_port redis REDIS_PORT "$strict")"; [[ -n "$rp" ]] || need=$((need + 1)); fi
    if ((want_kafka)); then
        kp="$(choose_port kafka KAFKA_PORT "$strict")"; [[ -n "$kp" ]] || need=$((need + 1))
        kcp="$(choose_port kafka-controller KAFKA_CONTROLLER_PORT "$strict")"; [[ -n "$kcp" ]] || need=$((need + 1))
    fi
    if ((need)); then
        local -a fresh excl=()
        local x
        for x in "$pgp" "$rp" "$kp" "$kcp" "$(read_port pg)" "$(read_port redis)" \
                 "$(read_port kafka)" "$(read_port kafka-controller)"; do
            [[ -n "$x" ]] && excl+=("$x")
        done
        local n
        for n in 1 2 3; do
            for x in "$(read_port "kafka$n")" "$(read_port "kafka$n-controller")"; do
                [[ -n "$x" ]] && excl+=("$x")
            done
        done
        read -r -a fresh <<<"$(new_ports "$need" "${excl[@]}")" || die "cannot find free ports"
        ((${#fresh[@]} == need)) || die "cannot find free ports"
        if ((want_pg)) && [[ -z "$pgp" ]]; then pgp="${fresh[0]}"; fresh=("${fresh[@]:1}"); fi
        if ((want_redis)) && [[ -z "$rp" ]]; then rp="${fresh[0]}"; fresh=("${fresh[@]:1}"); fi
        if ((want_kafka)) && [[ -z "$kp" ]]; then kp="${fresh[0]}"; fresh=("${fresh[@]:1}"); fi
        if ((want_kafka)) && [[ -z "$kcp" ]]; then kcp="${fresh[0]}"; fresh=("${fresh[@]:1}"); fi
    fi

    # Kafka first: it is the slowest to come up.
    if ((want_kafka)); then
        mkdir -p "$kafka_dir"
        libs="$("$repo/deploy/kafka/fetch.sh" --print-dir 9>&-)" || die "cannot fetch the Kafka jars"
        launched+=(kafka)
        kafka_launch "$kp" "$kcp" "$libs"
    fi
    if ((${#nodes[@]})); then
        libs="$("$repo/deploy/kafka/fetch.sh" --print-dir 9>&-)" || die "cannot fetch the Kafka jars"
        cluster_launch "$libs" "${nodes[@]}"
    fi
    if ((want_redis)); then
        launched+=(redis)
        redis_launch "$rp"
    fi
    if ((want_pg)); then
        pg_prepare
        launched+=(postgres)
        pg_launch "$pgp"
    fi

    # Wait for everything named (also those that were already running);
    # PostgreSQL first, so migrations overlap with Kafka's start-up.
    for svc in postgres redis kafka; do
        [[ " $* " == *" $svc "* ]] || continue
        case "$svc" in
            postgres) pg_wait ;;
            redis) redis_wait ;;
            kafka)
                if ((kafka_nodes == 1)); then kafka_wait; fi
                if ((kafka_secure)); then
                    [[ -n "$libs" ]] || libs="$("$repo/deploy/kafka/fetch.sh" --print-dir 9>&-)" \
                        || die "cannot fetch the Kafka jars"
                    kafka_secure_setup "$libs"
                fi
                ;;
        esac
    done
    if ((${#nodes[@]})); then cluster_wait; fi
}

stop_services() { # stop_services [KILL] SVC...
    local mode=""
    if [[ "${1:-}" == KILL ]]; then mode=KILL; shift; fi
    local -a pids=()
    local svc rc=0 p
    for svc in "$@"; do
        case "$svc" in
            postgres) pg_stop "$mode" & pids+=($!) ;;
            redis) redis_stop "$mode" & pids+=($!) ;;
            kafka)
                for p in $(kafka_node_ids); do
                    (kafka_select "$p" && kafka_stop "$mode") & pids+=($!)
                done
                ;;
            kafka[123]) (kafka_select "${svc#kafka}" && kafka_stop "$mode") & pids+=($!) ;;
        esac
    done
    for p in "${pids[@]}"; do
        wait "$p" || rc=1
    done
    return "$rc"
}

show_status() {
    local rc=0
    if pg_running; then echo "postgres running pid=$(pg_pid) port=$(read_port pg)"; else echo "postgres stopped"; rc=3; fi
    if redis_running; then echo "redis running pid=$(redis_pid) port=$(read_port redis)"; else echo "redis stopped"; rc=3; fi
    local n
    for n in $(kafka_node_ids); do
        kafka_select "$n"
        if kafka_running; then
            echo "$kafka_pname running pid=$(kafka_pid) port=$(read_port "$kafka_pname")"
        else
            echo "$kafka_pname stopped"; rc=3
        fi
    done
    kafka_select 0
    return "$rc"
}

# When a start fails, stop what it launched, so no half-started service
# is left behind.
launched=()
on_exit() {
    local rc=$?
    if ((rc != 0 && ${#launched[@]})); then
        if [[ -n "$kafka_launcher_pid" ]]; then wait "$kafka_launcher_pid" 2>/dev/null || true; fi
        local j
        for j in "${cluster_jobs[@]}"; do wait "$j" 2>/dev/null || true; done
        warn "start failed; stopping what it started (${launched[*]})"
        stop_services KILL "${launched[@]}" || true
        write_env || true
    fi
}
trap on_exit EXIT

# Serialize operations on one DIR. Children never inherit fd 9.
exec 9>"$DIR/.lock"
flock -w 300 9 || die "timed out waiting for another services.sh on $DIR"

# One broker or three: what DIR was started with, else what is asked.
asked="${SLUICE_KAFKA_NODES:-}"
[[ "$cmd" == start-cluster ]] && asked=3
[[ -z "$asked" || "$asked" == 1 || "$asked" == 3 ]] || die "SLUICE_KAFKA_NODES must be 1 or 3, not $asked"
if [[ -s "$DIR/kafka-nodes" ]]; then
    kafka_nodes="$(cat "$DIR/kafka-nodes")"
    [[ "$kafka_nodes" == 3 ]] || die "$DIR/kafka-nodes holds '$kafka_nodes', expected 3"
    if [[ "$cmd" == start || "$cmd" == start-cluster ]] && [[ "$asked" == 1 ]]; then
        die "$DIR holds a three-broker Kafka cluster, not one broker: destroy it first"
    fi
elif [[ "$asked" == 3 ]]; then
    if [[ ! -e "$DIR/kafka" ]]; then
        kafka_nodes=3
    elif [[ "$cmd" == start* ]]; then
        die "$DIR holds a single-broker Kafka, not a cluster: destroy it first"
    fi
fi
# Plain or secure (single broker only): what DIR was started with, else
# what is asked.
if [[ -e "$DIR/kafka-secure" ]]; then
    kafka_secure=1
elif [[ "${SLUICE_KAFKA_SECURE:-0}" == 1 ]]; then
    ((kafka_nodes == 1)) || die "SLUICE_KAFKA_SECURE=1 applies to a single broker, not to a cluster"
    if [[ -e "$DIR/kafka" ]]; then
        [[ "$cmd" != start* ]] || die "$DIR holds a plaintext Kafka, not a secure one: destroy it first"
    elif [[ "$cmd" == start || "$cmd" == start-kafka ]]; then
        kafka_secure=1
        touch "$DIR/kafka-secure"
    fi
fi
if [[ "$cmd" == *-kafka[123] ]] && ((kafka_nodes == 1)); then
    die "$DIR runs a single broker: kafka1..3 exist in a cluster (start-cluster DIR)"
fi

case "$cmd" in
    start|start-cluster)
        start_services kafka redis postgres
        write_env
        ;;
    stop)
        rc=0
        stop_services kafka redis postgres || rc=1
        write_env
        exit "$rc"
        ;;
    status)
        show_status || exit $?
        ;;
    destroy)
        stop_services kafka redis postgres || die "could not stop everything under $DIR; not deleting it"
        exec 9>&-
        if [[ -L "$DIR/pg" ]]; then rm -rf "$(readlink -f "$DIR/pg")"; fi
        rm -rf "$DIR"
        ;;
    start-*|stop-*|restart-*|kill-*)
        svc="${cmd#*-}"
        case "$cmd" in
            start-*) start_services "$svc" ;;
            stop-*) stop_services "$svc" || { write_env; exit 1; } ;;
            kill-*) stop_services KILL "$svc" || { write_env; exit 1; } ;;
            restart-*)
                stop_services "$svc" || { write_env; exit 1; }
                start_services "$svc"
                ;;
        esac
        write_env
        ;;
esac
