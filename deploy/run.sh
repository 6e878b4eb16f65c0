#!/usr/bin/env bash
# The local stack behind `make run` / `make stop`: Kafka, PostgreSQL and
# Redis (deploy/services.sh) plus sluice-ingest and sluice-worker, all under
# .run/ on loopback. Then it posts the sample webhooks and shows what
# happened. Safe to run twice: what runs already is kept.
#
# Usage: deploy/run.sh [start|stop|status]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run="$repo/.run"
bin="${SLUICE_BUILD_DIR:-$repo/build}"
cmd="${1:-start}"

say() { printf '%s\n' "$*"; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() { # name
	local pidf="$run/$1.pid" pid
	alive "$pidf" || { rm -f "$pidf"; return 0; }
	pid=$(cat "$pidf")
	kill -TERM "$pid"
	for _ in $(seq 1 150); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
	rm -f "$pidf"
	say "stopped $1"
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "$cmd" in
stop)
	stop_daemon sluice-ingest
	stop_daemon sluice-worker
	if [ -d "$run/services" ]; then
		"$repo/deploy/services.sh" stop "$run/services"
	fi
	say "local stack stopped"
	exit 0
	;;
status)
	for d in sluice-ingest sluice-worker; do
		if alive "$run/$d.pid"; then say "$d: running"; else say "$d: stopped"; fi
	done
	if [ -d "$run/services" ]; then "$repo/deploy/services.sh" status "$run/services" || true; fi
	exit 0
	;;
start) ;;
*) die "unknown command $cmd (start, stop or status)" ;;
esac

if [ ! -x "$bin/sluice-ingest" ] || [ ! -x "$bin/sluice-worker" ]; then
	die "binaries missing in $bin: run make first"
fi
mkdir -p "$run"
say "starting Kafka, PostgreSQL and Redis under .run/services ..."
"$repo/deploy/services.sh" start "$run/services"
# shellcheck disable=SC1091
. "$run/services/services.env"

if alive "$run/sluice-ingest.pid" && [ -f "$run/env" ]; then
	SLUICE_INGEST_LISTEN=$(sed -n 's/^export SLUICE_INGEST_LISTEN=//p' "$run/env")
else
	SLUICE_INGEST_LISTEN="127.0.0.1:$(free_port)"
fi
export SLUICE_INGEST_LISTEN SLUICE_POSTGRES_DSN SLUICE_REDIS_URL SLUICE_KAFKA_BROKERS
url="http://$SLUICE_INGEST_LISTEN"

cat >"$run/env" <<ENV
# Written by deploy/run.sh: source it to talk to the local stack.
export SLUICE_INGEST_URL=$url
export SLUICE_INGEST_LISTEN=$SLUICE_INGEST_LISTEN
export SLUICE_POSTGRES_DSN=$SLUICE_POSTGRES_DSN
export SLUICE_REDIS_URL=$SLUICE_REDIS_URL
export SLUICE_KAFKA_BROKERS=$SLUICE_KAFKA_BROKERS
export SLUICE_TOPIC=sluice.events
ENV

cd "$repo"
if ! alive "$run/sluice-worker.pid"; then
	"$bin/sluice-worker" -c deploy/local/worker.conf >>"$run/sluice-worker.log" 2>&1 &
	echo $! >"$run/sluice-worker.pid"
	say "started sluice-worker (log: .run/sluice-worker.log)"
fi
if ! alive "$run/sluice-ingest.pid"; then
	"$bin/sluice-ingest" -c deploy/local/ingest.conf >>"$run/sluice-ingest.log" 2>&1 &
	echo $! >"$run/sluice-ingest.pid"
	say "started sluice-ingest on $url (log: .run/sluice-ingest.log)"
fi
for _ in $(seq 1 100); do
	curl -fsS "$url/readyz" >/dev/null 2>&1 && break
	alive "$run/sluice-ingest.pid" || die "sluice-ingest exited; see .run/sluice-ingest.log"
	sleep 0.1
done
curl -fsS "$url/readyz" >/dev/null || die "sluice-ingest not ready; see .run/sluice-ingest.log"

rcli() { redis-cli -u "$SLUICE_REDIS_URL" "$@"; }
psqlq() { psql "$SLUICE_POSTGRES_DSN" -XAtq -c "$1"; }

# Cached pages the demo transcript makes stale.
for p in 1 2 3; do rcli SET "messages:demo-conv-vendor:$p:50" cached >/dev/null; done
rcli SET conversation:demo-conv-vendor cached >/dev/null
rcli SET messages:some-other-conv:1:50 cached >/dev/null
before=$(psqlq "SELECT count(*) FROM messages WHERE conversation_id LIKE 'demo-conv-%'")
log_mark=$(wc -l <"$run/sluice-worker.log")

say ""
say "posting the sample webhooks (each transcript twice) ..."
for f in replica-joined transcript-vendor transcript-vendor shutdown transcript-seed transcript-seed; do
	printf '  %-18s -> ' "$f"
	curl -sS -X POST "$url/v1/webhooks/tavus" -H 'Content-Type: application/json' \
		--data-binary "@deploy/samples/$f.json" -o "$run/last-reply.json" -w 'HTTP %{http_code} '
	cat "$run/last-reply.json"
done

expected=7
for _ in $(seq 1 100); do
	n=$(psqlq "SELECT count(*) FROM messages WHERE conversation_id LIKE 'demo-conv-%'")
	[ "$n" -ge "$expected" ] && [ "$(rcli EXISTS conversation:demo-conv-vendor)" = 0 ] && break
	sleep 0.1
done

say ""
say "what the worker did:"
tail -n +"$((log_mark + 1))" "$run/sluice-worker.log" | grep 'batch of' | sed 's/^/  /' || true
say ""
say "messages in PostgreSQL: $n for the demo conversations ($before before this run; a second"
say "run adds none: every message is keyed by (conversation_id, external_event_id))"
psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT id, status, last_event_type, transcript_received FROM conversations WHERE id LIKE 'demo-conv-%' ORDER BY id"
say "Redis keys of demo-conv-vendor left: $(rcli --scan --pattern 'messages:demo-conv-vendor:*' | wc -l) (other conversations' keys kept: $(rcli EXISTS messages:some-other-conv:1:50))"
say ""
say "The stack keeps running. Talk to it:"
say "  . .run/env"
say "  curl -X POST \$SLUICE_INGEST_URL/v1/webhooks/tavus -H 'Content-Type: application/json' \\"
say "       --data-binary @deploy/samples/transcript-seed.json"
say "  psql \"\$SLUICE_POSTGRES_DSN\" -c 'SELECT * FROM messages'"
say "  curl \$SLUICE_INGEST_URL/metrics"
say "Logs: .run/sluice-ingest.log, .run/sluice-worker.log. Stop everything with: make stop"
