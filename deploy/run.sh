#!/usr/bin/env bash
# The local stack behind `make run` / `make stop`: Kafka, PostgreSQL and
# Redis (deploy/services.sh) plus sluice-ingest and sluice-worker, all under
# .run/ on loopback. Then it posts the sample webhooks, a sample campaign
# batch (with the demo leads of deploy/local/seed.sql) and a sample WhatsApp
# chat (answered by deploy/samples/agent.py), and shows what happened. Safe
# to run twice: what runs already is kept (a daemon whose binary was rebuilt
# is restarted), and the second run adds no rows.
#
# Usage: deploy/run.sh [start|stop|status]
# SLUICE_PG_TLS=1 on the first start: PostgreSQL over TLS only
# (deploy/services.sh, docs/security.md). Either way the worker writes as
# sluice_worker, looks leads up as sluice_lookup, and the sample agent
# claims as sluice_agent.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run="$repo/.run"
bin="${SLUICE_BUILD_DIR:-$repo/build}"
cmd="${1:-start}"

say() { printf '%s\n' "$*"; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# True when the running daemon's binary was replaced since it started (a
# rebuild), so `make run` after `make` runs the new code.
rebuilt() { # name
	local exe
	exe=$(readlink "/proc/$(cat "$run/$1.pid")/exe" 2>/dev/null) || return 1
	[[ "$exe" == *" (deleted)" ]]
}

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
# The demo leads and inbox the sample campaign batch names; the migrations
# (tables leads, inboxes, ...) were applied by services.sh start.
psql "$SLUICE_POSTGRES_DSN" -X -q -v ON_ERROR_STOP=1 -f "$repo/deploy/local/seed.sql" \
	|| die "cannot load deploy/local/seed.sql"

if alive "$run/sluice-ingest.pid" && [ -f "$run/env" ]; then
	SLUICE_INGEST_LISTEN=$(sed -n 's/^export SLUICE_INGEST_LISTEN=//p' "$run/env")
else
	SLUICE_INGEST_LISTEN="127.0.0.1:$(free_port)"
fi
# The worker's health and metrics endpoint (listen), kept like ingest's.
if alive "$run/sluice-worker.pid" && [ -f "$run/env" ] &&
	grep -q '^export SLUICE_WORKER_LISTEN=' "$run/env"; then
	SLUICE_WORKER_LISTEN=$(sed -n 's/^export SLUICE_WORKER_LISTEN=//p' "$run/env")
else
	SLUICE_WORKER_LISTEN="127.0.0.1:$(free_port)"
fi
export SLUICE_INGEST_LISTEN SLUICE_POSTGRES_DSN SLUICE_REDIS_URL SLUICE_KAFKA_BROKERS
export SLUICE_WORKER_LISTEN
url="http://$SLUICE_INGEST_LISTEN"

cat >"$run/env" <<ENV
# Written by deploy/run.sh: source it to talk to the local stack.
export SLUICE_INGEST_URL=$url
export SLUICE_INGEST_LISTEN=$SLUICE_INGEST_LISTEN
export SLUICE_WORKER_URL=http://$SLUICE_WORKER_LISTEN
export SLUICE_WORKER_LISTEN=$SLUICE_WORKER_LISTEN
export SLUICE_POSTGRES_DSN=$SLUICE_POSTGRES_DSN
export SLUICE_PG_WORKER_DSN=$SLUICE_PG_WORKER_DSN
export SLUICE_PG_AGENT_DSN=$SLUICE_PG_AGENT_DSN
export SLUICE_PG_LOOKUP_DSN=$SLUICE_PG_LOOKUP_DSN
export SLUICE_REDIS_URL=$SLUICE_REDIS_URL
export SLUICE_KAFKA_BROKERS=$SLUICE_KAFKA_BROKERS
export SLUICE_TOPIC=sluice.events
ENV

cd "$repo"
for d in sluice-worker sluice-ingest; do
	if alive "$run/$d.pid" && rebuilt "$d"; then
		say "$d was rebuilt since it started: restarting it"
		stop_daemon "$d"
	fi
done
if ! alive "$run/sluice-worker.pid"; then
	# The worker writes as sluice_worker and looks leads up as
	# sluice_lookup (docs/security.md); SLUICE_POSTGRES_DSN, the owner's,
	# seeds and shows. The lookup DSN has no variable: it goes in a copy
	# of the config.
	{
		cat deploy/local/worker.conf
		printf 'lead_context.postgres_dsn = %s\n' "$SLUICE_PG_LOOKUP_DSN"
	} >"$run/worker.conf"
	SLUICE_POSTGRES_DSN=$SLUICE_PG_WORKER_DSN \
		"$bin/sluice-worker" -c "$run/worker.conf" >>"$run/sluice-worker.log" 2>&1 &
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
for _ in $(seq 1 100); do
	curl -fsS "http://$SLUICE_WORKER_LISTEN/healthz" >/dev/null 2>&1 && break
	alive "$run/sluice-worker.pid" || die "sluice-worker exited; see .run/sluice-worker.log"
	sleep 0.1
done
curl -fsS "http://$SLUICE_WORKER_LISTEN/healthz" >/dev/null ||
	die "sluice-worker does not answer on $SLUICE_WORKER_LISTEN; see .run/sluice-worker.log"

rcli() { redis-cli -u "$SLUICE_REDIS_URL" "$@"; }
psqlq() { psql "$SLUICE_POSTGRES_DSN" -XAtq -c "$1"; }
# Records the worker committed since line MARK of its log: its lines
# "batch of N records in ..." (not "... records not committed").
records_since() { # MARK
	tail -n +"$(($1 + 1))" "$run/sluice-worker.log" |
		sed -n 's/.*batch of \([0-9][0-9]*\) records \{0,1\}[:i].*/\1/p' |
		awk '{ n += $1 } END { print n + 0 }'
}

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
for _ in $(seq 1 300); do
	n=$(psqlq "SELECT count(*) FROM messages WHERE conversation_id LIKE 'demo-conv-%'")
	[ "$n" -ge "$expected" ] && [ "$(rcli EXISTS conversation:demo-conv-vendor)" = 0 ] &&
		[ "$(records_since "$log_mark")" -ge 6 ] && break
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

# The campaign demo: deploy/samples/campaign-batch.json names 4 leads of
# deploy/local/seed.sql (one deleted, one unknown); run_total is 4, so the
# run finishes with this one batch.
run_id=demo-run-1
cbefore=$(psqlq "SELECT count(*) FROM campaign_messages WHERE run_id = '$run_id'")
log_mark=$(wc -l <"$run/sluice-worker.log")
say ""
say "posting the sample campaign batch (twice: the second post changes nothing) ..."
for _ in 1 2; do
	printf '  %-18s -> ' campaign-batch
	code=$(curl -sS -X POST "$url/v1/campaigns/demo-campaign/batches" -H 'Content-Type: application/json' \
		--data-binary @deploy/samples/campaign-batch.json -o "$run/last-reply.json" -w '%{http_code}')
	printf 'HTTP %s ' "$code"
	cat "$run/last-reply.json"
	[ "$code" = 202 ] || die "the campaign batch was refused; see .run/sluice-ingest.log"
done

status=""
for _ in $(seq 1 300); do
	status=$(psqlq "SELECT status FROM campaign_runs WHERE id = '$run_id'")
	[ "$status" = finished ] && [ "$(records_since "$log_mark")" -ge 2 ] && break
	sleep 0.1
done

say ""
say "what the worker did:"
tail -n +"$((log_mark + 1))" "$run/sluice-worker.log" | grep 'batch of' | sed 's/^/  /' || true
say ""
cn=$(psqlq "SELECT count(*) FROM campaign_messages WHERE run_id = '$run_id'")
say "the outbox (campaign_messages): $cn rows for $run_id ($cbefore before this run; a second"
say "run adds none: a message id already there is left alone)"
psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT message_id, lead_id, status, parts, error FROM campaign_messages WHERE run_id = '$run_id' ORDER BY message_id"
say "the run's counters (campaign_runs):"
psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT id, status, total, processed, failed, paused, expired, finished_at FROM campaign_runs WHERE id = '$run_id'"
say "lead contexts cached in Redis (lead_ctx:demo-lead-*): $(rcli --scan --pattern 'lead_ctx:demo-lead-*' | wc -l)"
[ "$status" = finished ] ||
	die "run $run_id is not finished after 30 s (status: ${status:-no row}); see .run/sluice-worker.log"

# The chat demo (docs/chat.md): Ana, demo-lead-ana of deploy/local/seed.sql
# (phone +15550100001), writes on WhatsApp. Her first message opens a turn,
# which a demo agent claims with psql; while it holds it, a delivery status
# (which opens no turn) and two quick messages arrive, and the two gather in
# one open turn. Then the claimed turn is answered and deploy/samples/agent.py
# answers the gathered one. A second run posts the same message ids again:
# no message, no turn.
ana=15550100001
chat_ids="'wamid.demo-ana-1','wamid.demo-ana-2','wamid.demo-ana-3'"
py="$repo/.venv/bin/python"
[ -x "$py" ] || py=python3
post_chat() { # SAMPLE
	local code
	printf '  %-18s -> ' "$1"
	code=$(curl -sS -X POST "$url/v1/webhooks/whatsapp" -H 'Content-Type: application/json' \
		--data-binary "@deploy/samples/$1.json" -o "$run/last-reply.json" -w '%{http_code}')
	printf 'HTTP %s ' "$code"
	cat "$run/last-reply.json"
	[ "$code" = 200 ] || die "the chat webhook $1 was refused; see .run/sluice-ingest.log"
}
turn_of() { # MESSAGE_ID: "id status" of the turn holding it, or nothing
	psqlq "SELECT id || ' ' || status FROM chat_turns WHERE '$1' = ANY(message_ids) ORDER BY id LIMIT 1"
}
chbefore=$(psqlq "SELECT count(*) FROM chat_messages WHERE provider_message_id IN ($chat_ids)")
log_mark=$(wc -l <"$run/sluice-worker.log")
say ""
say "posting a sample WhatsApp chat from Ana ($ana) ..."
post_chat chat-first
first=""
for _ in $(seq 1 300); do
	first=$(turn_of wamid.demo-ana-1)
	[ -n "$first" ] && break
	sleep 0.1
done
[ -n "$first" ] || die "no turn holds wamid.demo-ana-1 after 30 s; see .run/sluice-worker.log"
claimed=0
if [ "${first#* }" = open ]; then
	claimed=1
	say "her first message opened turn ${first% *}; the demo agent claims it:"
	say "  SELECT * FROM sluice_claim_turn('demo-agent')"
	psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT id, sender, lead_id, status, claimed_by, message_ids,
		lead_context->'lead'->>'name' AS lead_name FROM sluice_claim_turn('demo-agent')"
else
	say "her first message's turn ${first% *} is ${first#* } already (an earlier run): nothing to claim"
fi
if [ "$claimed" = 1 ]; then
	say "while the agent holds it: a delivery status, then two quick messages ..."
else
	say "the delivery status and the two quick messages again (stored already) ..."
fi
post_chat chat-status
post_chat chat-burst-1
post_chat chat-burst-2

cn=0
for _ in $(seq 1 300); do
	cn=$(psqlq "SELECT count(*) FROM chat_messages WHERE provider_message_id IN ($chat_ids)")
	[ "$cn" -ge 3 ] && [ -n "$(turn_of wamid.demo-ana-3)" ] &&
		[ "$(psqlq "SELECT count(*) FROM chat_statuses WHERE provider_message_id = 'wamid.demo-out-1'")" -ge 1 ] &&
		[ "$(records_since "$log_mark")" -ge 4 ] && break
	sleep 0.1
done
say ""
say "what the worker did:"
tail -n +"$((log_mark + 1))" "$run/sluice-worker.log" | grep 'batch of' | sed 's/^/  /' || true
say ""
say "chat_messages: $cn of Ana's 3 messages ($chbefore before this run; a second run adds none:"
say "a provider message id is stored once)"
psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT provider_message_id, business_number, sender, type, text, sent_at
	FROM chat_messages WHERE sender = '$ana' ORDER BY sent_at, id"
say "chat_statuses (a status opens no turn):"
psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT provider_message_id, status, recipient_id, status_at
	FROM chat_statuses WHERE recipient_id = '$ana' ORDER BY status_at"
say "chat_turns: the burst gathered in one open turn while the first was claimed:"
psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT id, sender, lead_id, status, message_ids
	FROM chat_turns WHERE sender = '$ana' ORDER BY id"
[ "$cn" -ge 3 ] || die "only $cn of Ana's 3 chat messages stored after 30 s; see .run/sluice-worker.log"

held=$(psqlq "SELECT count(*) FROM chat_turns
	WHERE sender = '$ana' AND status = 'claimed' AND claimed_by = 'demo-agent'")
if [ "$held" -gt 0 ]; then
	say "the demo agent is done with its turn: sluice_answer_turn"
	psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT id, sluice_answer_turn(id) AS answered
		FROM chat_turns WHERE sender = '$ana' AND status = 'claimed' AND claimed_by = 'demo-agent'"
fi
open=$(psqlq "SELECT count(*) FROM chat_turns WHERE sender = '$ana' AND status = 'open'")
if [ "$open" -gt 0 ]; then
	say "deploy/samples/agent.py answers the gathered turn (LISTEN sluice_turns, claim, answer):"
	"$py" deploy/samples/agent.py --dsn "$SLUICE_PG_AGENT_DSN" --name demo-agent \
		--turns "$open" --timeout 30 2>&1 | sed 's/^/  /' ||
		die "deploy/samples/agent.py did not answer $open turn(s) in 30 s"
else
	say "no open turn of Ana's left for deploy/samples/agent.py (no new message, no new turn)"
fi
psql "$SLUICE_POSTGRES_DSN" -Xq -c "SELECT id, status, claimed_by, array_length(message_ids, 1) AS messages,
	answered_at - created_at AS open_to_answered FROM chat_turns WHERE sender = '$ana' ORDER BY id"
say ""
say "The stack keeps running. Talk to it:"
say "  . .run/env"
say "  curl -X POST \$SLUICE_INGEST_URL/v1/webhooks/tavus -H 'Content-Type: application/json' \\"
say "       --data-binary @deploy/samples/transcript-seed.json"
say "  psql \"\$SLUICE_POSTGRES_DSN\" -c 'SELECT * FROM messages'"
say "  curl -X POST \$SLUICE_INGEST_URL/v1/campaigns/demo-campaign/batches -H 'Content-Type: application/json' \\"
say "       --data-binary @deploy/samples/campaign-batch.json"
say "  curl -X POST \$SLUICE_INGEST_URL/v1/webhooks/crm -H 'Content-Type: application/json' \\"
say "       -d '{\"lead_id\": \"demo-lead-ana\"}'    # drops the lead's cached context"
say "  psql \"\$SLUICE_POSTGRES_DSN\" -c 'SELECT * FROM campaign_messages'"
say "  curl -X POST \$SLUICE_INGEST_URL/v1/webhooks/whatsapp -H 'Content-Type: application/json' \\"
say "       --data-binary @deploy/samples/chat-first.json    # an id already stored adds nothing"
say "  .venv/bin/python deploy/samples/agent.py --timeout 60    # claims and answers chat turns"
say "  curl \$SLUICE_INGEST_URL/metrics"
say "  curl \$SLUICE_WORKER_URL/readyz; curl \$SLUICE_WORKER_URL/metrics    # the worker's own"
say "Campaign messages above come from their template. To have a model write them instead"
say "(any OpenAI-compatible endpoint: OpenRouter, OpenAI, vLLM, Ollama; docs/campaigns.md):"
say "  (umask 077; printf '%s\\n' \"\$YOUR_API_KEY\" > .run/model.key)    # a key file others can read is refused"
say "  export SLUICE_COMPOSER_BASE_URL=https://openrouter.ai/api/v1 SLUICE_COMPOSER_API_KEY_FILE=\$PWD/.run/model.key SLUICE_COMPOSER_DEFAULT_MODEL=openai/gpt-4o-mini"
say "  make stop run && curl -X POST \$SLUICE_INGEST_URL/v1/campaigns/demo-campaign/batches -H 'Content-Type: application/json' --data-binary @deploy/samples/campaign-prompt.json"
say "Logs: .run/sluice-ingest.log, .run/sluice-worker.log. Stop everything with: make stop"
