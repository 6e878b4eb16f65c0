#!/usr/bin/env bash
# The secure local stack behind `make run-secure` (docs/security.md), all
# under .run/secure/ on loopback: the SASL_SSL broker with its ACLs and the
# TLS-only PostgreSQL of deploy/services.sh, a TLS-only Redis with the
# doc's ACL user reached through a stunnel4 tunnel, sluice-ingest on HTTPS
# only as sluice_ingest, sluice-worker as sluice_worker (lead lookups as
# sluice_lookup). A throwaway CA (deploy/testca.sh) signs every server
# certificate. It posts one signed transcript over HTTPS to show the path
# and prints how to post more. `make stop` stops it (with the plain one).
#
# Usage: deploy/run-secure.sh [start|stop]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sec="$repo/.run/secure"
bin="${SLUICE_BUILD_DIR:-$repo/build}"
cmd="${1:-start}"

say() { printf '%s\n' "$*"; }
die() { printf 'run-secure.sh: error: %s\n' "$*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() { # name pidfile
	local pid
	alive "$2" || { rm -f "$2"; return 0; }
	pid=$(cat "$2")
	kill -TERM "$pid"
	for _ in $(seq 1 150); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
	rm -f "$2"
	say "stopped $1"
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A secret that only this user may read, made once: hex (it goes into a
# URL), or base64 after a prefix.
secret() { # path [prefix]
	[ -s "$1" ] && return 0
	if [ -n "${2:-}" ]; then
		(umask 077 && printf '%s%s\n' "$2" "$(openssl rand -base64 32)" >"$1")
	else
		(umask 077 && openssl rand -hex 24 >"$1")
	fi
}

case "$cmd" in
stop)
	[ -d "$sec" ] || exit 0
	stop_pid sluice-ingest "$sec/sluice-ingest.pid"
	stop_pid sluice-worker "$sec/sluice-worker.pid"
	stop_pid stunnel4 "$sec/stunnel.pid"
	stop_pid redis-server "$sec/redis.pid"
	if [ -d "$sec/services" ]; then "$repo/deploy/services.sh" stop "$sec/services"; fi
	say "secure local stack stopped"
	exit 0
	;;
start) ;;
*) die "unknown command $cmd (start or stop)" ;;
esac

[ -x "$bin/sluice-ingest" ] && [ -x "$bin/sluice-worker" ] || die "binaries missing in $bin: run make first"
stunnel=$(command -v stunnel4 || command -v stunnel) || die "stunnel4 not found: run deploy/install-deps.sh"
mkdir -p "$sec/secrets"
chmod 700 "$sec" "$sec/secrets"

say "starting the secure Kafka (SASL_SSL, ACLs) and PostgreSQL (TLS only) under .run/secure/services ..."
SLUICE_KAFKA_SECURE=1 "$repo/deploy/services.sh" start-kafka "$sec/services"
SLUICE_PG_TLS=1 "$repo/deploy/services.sh" start-postgres "$sec/services"
# shellcheck disable=SC1091
. "$sec/services/services.env"
psql "$SLUICE_POSTGRES_DSN" -X -q -v ON_ERROR_STOP=1 -f "$repo/deploy/local/seed.sql" >/dev/null ||
	die "cannot load deploy/local/seed.sql"

# One CA for Redis's and ingest's certificates (Kafka's and PostgreSQL's
# are services.sh's own).
[ -f "$sec/ca/ingest.crt" ] || "$repo/deploy/testca.sh" "$sec/ca" ingest
[ -f "$sec/ca/redis.crt" ] || "$repo/deploy/testca.sh" "$sec/ca" redis
secret "$sec/secrets/redis-admin"
secret "$sec/secrets/redis-sluice"
secret "$sec/secrets/tavus.secret" whsec_
secret "$sec/secrets/whatsapp.secret"

# Redis: TLS only, the default user behind a password, and the ACL user of
# docs/security.md as its config's `user` line (no password in argv).
if ! alive "$sec/redis.pid"; then
	redis_port=$(free_port)
	acl=$(grep -m1 '^ACL SETUSER sluice ' "$repo/docs/security.md") || die "no ACL SETUSER line in docs/security.md"
	(
		umask 077
		cat >"$sec/redis.conf" <<CONF
port 0
tls-port $redis_port
bind 127.0.0.1
tls-cert-file $sec/ca/redis.crt
tls-key-file $sec/ca/redis.key
tls-ca-cert-file $sec/ca/ca.crt
tls-auth-clients no
save ""
appendonly no
dir $sec
daemonize yes
pidfile $sec/redis.pid
logfile $sec/redis.log
requirepass $(cat "$sec/secrets/redis-admin")
${acl/#ACL SETUSER /user }
CONF
	)
	sed -i "s|>PASSWORD|>$(cat "$sec/secrets/redis-sluice")|" "$sec/redis.conf"
	redis-server "$sec/redis.conf"
	echo "$redis_port" >"$sec/redis.port"
	say "started redis-server (TLS only on 127.0.0.1:$redis_port)"
fi
redis_port=$(cat "$sec/redis.port")
if ! alive "$sec/stunnel.pid"; then
	tunnel_port=$(free_port)
	cat >"$sec/stunnel.conf" <<CONF
pid = $sec/stunnel.pid
output = $sec/stunnel.log
[sluice-redis]
client = yes
accept = 127.0.0.1:$tunnel_port
connect = 127.0.0.1:$redis_port
verifyChain = yes
CAfile = $sec/ca/ca.crt
checkHost = localhost
sslVersionMin = TLSv1.2
CONF
	"$stunnel" "$sec/stunnel.conf"
	echo "$tunnel_port" >"$sec/tunnel.port"
	say "started stunnel4 (127.0.0.1:$tunnel_port -> Redis over TLS)"
fi
tunnel_port=$(cat "$sec/tunnel.port")

kafka() { # principal
	printf '%s\n' "kafka.security.protocol = SASL_SSL" "kafka.sasl.mechanisms = SCRAM-SHA-512" \
		"kafka.sasl.username = $1" "kafka_sasl_password_file = $SLUICE_KAFKA_SECRETS/$1.password" \
		"kafka.ssl.ca.location = $SLUICE_KAFKA_CA" "brokers = $SLUICE_KAFKA_BROKERS" \
		"topic = sluice.events" "topic_partitions = 0"
}
# The daemons take their connection points from their configs alone: the
# SLUICE_* variables of services.env (the owner's DSN among them) would
# override them.
daemon() { # binary config log
	local unset=() v
	for v in $(compgen -e); do [[ $v == SLUICE_* ]] && unset+=(-u "$v"); done
	env "${unset[@]}" "$1" -c "$2" >>"$3" 2>&1 &
}
if ! alive "$sec/sluice-worker.pid"; then
	worker_listen="127.0.0.1:$(free_port)"
	(
		umask 077
		{
			kafka sluice_worker
			printf '%s\n' "listen = $worker_listen" "group_id = sluice-worker" \
				"postgres_dsn = $SLUICE_PG_WORKER_DSN" \
				"lead_context.postgres_dsn = $SLUICE_PG_LOOKUP_DSN" \
				"redis_url = redis://sluice:$(cat "$sec/secrets/redis-sluice")@127.0.0.1:$tunnel_port/0" \
				"invalidate_keys = messages:{conversation_id}:*,conversation:{conversation_id}"
		} >"$sec/worker.conf"
	)
	echo "$worker_listen" >"$sec/worker.listen"
	daemon "$bin/sluice-worker" "$sec/worker.conf" "$sec/sluice-worker.log"
	echo $! >"$sec/sluice-worker.pid"
	say "started sluice-worker as sluice_worker (log: .run/secure/sluice-worker.log)"
fi
if ! alive "$sec/sluice-ingest.pid"; then
	listen="127.0.0.1:$(free_port)"
	(
		umask 077
		{
			kafka sluice_ingest
			printf '%s\n' "listen = $listen" "tls_cert_file = $sec/ca/ingest.crt" \
				"tls_key_file = $sec/ca/ingest.key" "schema_dir = $repo/schemas" \
				"source.tavus.kind = transcript" "source.tavus.signature = standard-webhooks" \
				"source.tavus.secret_file = $sec/secrets/tavus.secret" \
				"source.scheduler.kind = campaign" "source.scheduler.signature = none" \
				"source.whatsapp.kind = chat" "source.whatsapp.signature = meta" \
				"source.whatsapp.secret_file = $sec/secrets/whatsapp.secret"
		} >"$sec/ingest.conf"
	)
	echo "$listen" >"$sec/ingest.listen"
	daemon "$bin/sluice-ingest" "$sec/ingest.conf" "$sec/sluice-ingest.log"
	echo $! >"$sec/sluice-ingest.pid"
	say "started sluice-ingest as sluice_ingest, HTTPS only (log: .run/secure/sluice-ingest.log)"
fi
url="https://$(cat "$sec/ingest.listen")"
ca="$sec/ca/ca.crt"
for _ in $(seq 1 300); do
	curl -fsS --cacert "$ca" "$url/readyz" >/dev/null 2>&1 && break
	alive "$sec/sluice-ingest.pid" || die "sluice-ingest exited; see .run/secure/sluice-ingest.log"
	sleep 0.2
done
curl -fsS --cacert "$ca" "$url/readyz" >/dev/null || die "sluice-ingest not ready; see .run/secure/sluice-ingest.log"

# A Standard Webhooks signature: base64 HMAC-SHA256, keyed by the secret's
# base64 after whsec_, of "id.timestamp.body".
sign() { # id ts body-file
	local key
	key=$(sed 's/^whsec_//' "$sec/secrets/tavus.secret" | base64 -d | od -An -tx1 | tr -d ' \n')
	{ printf '%s.%s.' "$1" "$2"; cat "$3"; } |
		openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" -binary | base64
}
id="msg_$(date +%s%N)" ts=$(date +%s) body="$repo/deploy/samples/transcript-seed.json"
say ""
say "posting deploy/samples/transcript-seed.json, signed, over HTTPS ..."
code=$(curl -sS --cacert "$ca" -X POST "$url/v1/webhooks/tavus" -H 'Content-Type: application/json' \
	-H "webhook-id: $id" -H "webhook-timestamp: $ts" -H "webhook-signature: v1,$(sign "$id" "$ts" "$body")" \
	--data-binary "@$body" -o "$sec/last-reply.json" -w '%{http_code}')
say "  HTTP $code $(cat "$sec/last-reply.json")"
[ "$code" = 202 ] || die "the signed webhook was refused; see .run/secure/sluice-ingest.log"
n=0
for _ in $(seq 1 300); do
	n=$(psql "$SLUICE_POSTGRES_DSN" -XAtqc "SELECT count(*) FROM messages WHERE conversation_id = 'demo-conv-seed'")
	[ "$n" -gt 0 ] && break
	sleep 0.2
done
say "  messages of demo-conv-seed in PostgreSQL (written by sluice_worker over TLS): $n"

cat <<EOF

The secure stack keeps running. Where things are:
  CA of ingest and Redis:   .run/secure/ca/ca.crt   (Kafka's: $SLUICE_KAFKA_CA,
                            PostgreSQL's: $SLUICE_PG_CA)
  signing secrets:          .run/secure/secrets/tavus.secret (Standard Webhooks),
                            .run/secure/secrets/whatsapp.secret (Meta app secret)
  Kafka passwords:          $SLUICE_KAFKA_SECRETS/<user>.password
  PostgreSQL passwords:     .run/secure/services/pg-tls/secrets/ (passfile .run/secure/services/pg-tls/pgpass)
  Redis passwords:          .run/secure/secrets/redis-admin (default user), redis-sluice (user sluice)
  configs:                  .run/secure/ingest.conf, .run/secure/worker.conf (mode 0600)
Post a signed webhook over HTTPS (plain http:// is refused on that port):
  id=msg_\$(date +%s%N) ts=\$(date +%s) body=deploy/samples/transcript-vendor.json
  key=\$(sed 's/^whsec_//' .run/secure/secrets/tavus.secret | base64 -d | od -An -tx1 | tr -d ' \\n')
  sig=\$({ printf '%s.%s.' \$id \$ts; cat \$body; } | openssl dgst -sha256 -mac HMAC -macopt hexkey:\$key -binary | base64)
  curl --cacert .run/secure/ca/ca.crt -X POST $url/v1/webhooks/tavus -H 'Content-Type: application/json' \\
       -H "webhook-id: \$id" -H "webhook-timestamp: \$ts" -H "webhook-signature: v1,\$sig" --data-binary @\$body
  curl --cacert .run/secure/ca/ca.crt $url/readyz
  psql "$SLUICE_POSTGRES_DSN" -c 'SELECT * FROM messages'
Logs: .run/secure/*.log. Stop everything with: make stop
EOF
