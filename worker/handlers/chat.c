/* Inbound chat (WhatsApp Business Cloud API webhooks) → chat_messages,
 * chat_statuses and the turns an agent claims (chat_turns), each person's
 * lead context read by phone through the lead-context service. */
#include "chat.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/chat.h"
#include "../../common/kafka.h"
#include "../../common/util.h"
#include "../../common/validate.h"
#include "../contexts.h"
#include "../pgsink.h"

static const char SQL_STAGING[] =
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_chat ("
    " seq bigint, provider_message_id text, business_number text,"
    " sender text, type text, text text, raw text, sent_ms bigint,"
    " received_ms bigint) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_chat_status ("
    " provider_message_id text, status text, recipient_id text,"
    " status_ms bigint, raw text, received_ms bigint)"
    " ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_chat_lead ("
    " sender text, lead_id text, context text) ON COMMIT DELETE ROWS;";

static const char SQL_STATUSES[] =
    "INSERT INTO chat_statuses (provider_message_id, status, recipient_id,"
    "   status_at, raw, received_at)"
    " SELECT DISTINCT ON (provider_message_id, status) provider_message_id,"
    "   status, recipient_id, to_timestamp(nullif(status_ms, 0) / 1000.0),"
    "   raw::jsonb, to_timestamp(received_ms / 1000.0)"
    " FROM sluice_stage_chat_status"
    " ON CONFLICT (provider_message_id, status) DO NOTHING";

/* One statement: the messages go in once each (a re-delivered webhook adds
 * nothing); each conversation's new messages, in the order the person sent
 * them, join its open turn or open one. A turn the agent claimed while this
 * ran is not open any more when the UPDATE gets its row lock, so the
 * messages open the next turn instead. pg_notify is delivered at COMMIT. */
static const char SQL_TURNS[] =
    "WITH s AS ("
    "  SELECT DISTINCT ON (provider_message_id) * FROM sluice_stage_chat"
    "  ORDER BY provider_message_id, seq),"
    " new AS ("
    "  INSERT INTO chat_messages (provider_message_id, business_number,"
    "   sender, type, text, raw, sent_at, received_at)"
    "  SELECT provider_message_id, business_number, sender, type, text,"
    "   raw::jsonb, to_timestamp(nullif(sent_ms, 0) / 1000.0),"
    "   to_timestamp(received_ms / 1000.0) FROM s"
    "  ON CONFLICT (provider_message_id) DO NOTHING"
    "  RETURNING provider_message_id, business_number, sender, sent_at),"
    " g AS ("
    "  SELECT new.business_number, new.sender,"
    "   array_agg(new.provider_message_id ORDER BY s.seq) AS ids,"
    "   min(new.sent_at) AS first_at, max(new.sent_at) AS last_at"
    "  FROM new JOIN s USING (provider_message_id) GROUP BY 1, 2),"
    " upd AS ("
    "  UPDATE chat_turns t SET message_ids = t.message_ids || g.ids,"
    "   last_message_at = greatest(t.last_message_at, g.last_at)"
    "  FROM g WHERE t.business_number = g.business_number"
    "   AND t.sender = g.sender AND t.status = 'open'"
    "  RETURNING t.business_number, t.sender),"
    " ins AS ("
    "  INSERT INTO chat_turns (business_number, sender, lead_id,"
    "   lead_context, message_ids, first_message_at, last_message_at)"
    "  SELECT g.business_number, g.sender, l.lead_id, l.context::jsonb,"
    "   g.ids, g.first_at, g.last_at"
    "  FROM g LEFT JOIN sluice_stage_chat_lead l ON l.sender = g.sender"
    "  WHERE NOT EXISTS (SELECT 1 FROM upd WHERE"
    "   upd.business_number = g.business_number AND upd.sender = g.sender)"
    "  RETURNING business_number, sender),"
    " touched AS ("
    "  SELECT pg_notify('sluice_turns', business_number || ':' || sender)"
    "  FROM (SELECT * FROM upd UNION SELECT * FROM ins) x)"
    " SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM touched)";

struct chat_state {
	struct handler_env env;
	struct buf msgs, statuses, leads;
	char **senders; /* whose lead context to read */
	size_t n_senders, cap_senders;
	int64_t seq;
	int64_t received_ms;
	size_t records, messages, n_statuses;
	long long inserted, touched;
	unsigned long long saved, skipped; /* totals of committed batches */
};

static void *chat_create(const struct handler_env *env)
{
	struct chat_state *c = xcalloc(1, sizeof(*c));

	c->env = *env;
	buf_init(&c->msgs);
	buf_init(&c->statuses);
	buf_init(&c->leads);
	return c;
}

static void chat_reset(void *st)
{
	struct chat_state *c = st;

	buf_reset(&c->msgs);
	buf_reset(&c->statuses);
	buf_reset(&c->leads);
	for (size_t i = 0; i < c->n_senders; i++)
		free(c->senders[i]);
	c->n_senders = 0;
	c->seq = 0;
	c->records = c->messages = c->n_statuses = 0;
	c->inserted = c->touched = 0;
}

static void chat_destroy(void *st)
{
	struct chat_state *c = st;

	chat_reset(c);
	free(c->senders);
	buf_free(&c->msgs);
	buf_free(&c->statuses);
	buf_free(&c->leads);
	free(c);
}

static void field(struct buf *b, const char *s)
{
	if (s)
		buf_copy_escape(b, s);
	else
		buf_puts(b, "\\N");
	buf_puts(b, "\t");
}

static void want_sender(struct chat_state *c, const char *sender)
{
	char digits[CHAT_PHONE_MAX + 1];

	for (size_t i = 0; i < c->n_senders; i++)
		if (strcmp(c->senders[i], sender) == 0)
			return;
	if (c->n_senders == c->cap_senders) {
		c->cap_senders = c->cap_senders ? c->cap_senders * 2 : 32;
		c->senders =
		    xrealloc(c->senders, c->cap_senders * sizeof(char *));
	}
	c->senders[c->n_senders++] = xstrdup(sender);
	if (chat_phone_digits(sender, digits, sizeof(digits)))
		contexts_want(c->env.contexts, CTX_NS_PHONE, digits);
}

/* chat_each's callback: stages one message or status. */
static void stage_item(void *arg, const struct chat_item *it)
{
	struct chat_state *c = arg;
	const cJSON *v = it->json;
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(v, "id");
	char *raw = cJSON_PrintUnformatted(v);

	if (it->is_status) {
		const cJSON *s = cJSON_GetObjectItemCaseSensitive(v, "status");

		field(&c->statuses, id->valuestring);
		field(&c->statuses, s->valuestring);
		field(&c->statuses, it->sender);
		buf_printf(&c->statuses, "%lld\t", (long long)it->at_ms);
		field(&c->statuses, raw);
		buf_printf(&c->statuses, "%lld\n", (long long)c->received_ms);
		c->n_statuses++;
	} else {
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(v, "type");
		const cJSON *body = cJSON_GetObjectItemCaseSensitive(
		    cJSON_GetObjectItemCaseSensitive(v, "text"), "body");

		buf_printf(&c->msgs, "%lld\t", (long long)c->seq++);
		field(&c->msgs, id->valuestring);
		field(&c->msgs, it->business);
		field(&c->msgs, it->sender);
		field(&c->msgs, type->valuestring);
		field(&c->msgs,
		      cJSON_IsString(body) ? body->valuestring : NULL);
		field(&c->msgs, raw);
		buf_printf(&c->msgs, "%lld\t%lld\n", (long long)it->at_ms,
			   (long long)c->received_ms);
		c->messages++;
		want_sender(c, it->sender);
	}
	cJSON_free(raw);
}

static bool chat_add(void *st, const struct record *r, char *reason,
		     size_t reason_size)
{
	struct chat_state *c = st;
	cJSON *doc = cJSON_ParseWithLength(r->value, r->len);
	char path[128], msg[160];

	if (!doc ||
	    !json_check(r->value, r->len, doc, path, sizeof(path), msg,
			sizeof(msg)) ||
	    !chat_validate(doc, path, sizeof(path), msg, sizeof(msg))) {
		snprintf(reason, reason_size, "%s %s", doc ? path : "$",
			 doc ? msg : "value is not JSON");
		cJSON_Delete(doc);
		return false;
	}
	c->received_ms = r->received_ms;
	/* The record is one person's part of the webhook (its chat-sender
	 * header); without the header, everyone's. */
	chat_each(doc, r->sender && r->sender[0] ? r->sender : NULL, stage_item,
		  c);
	c->records++;
	cJSON_Delete(doc);
	return true;
}

static bool chat_prepare(void *st, struct pgsink *ps, char *errstr,
			 size_t errstr_size)
{
	struct chat_state *c = st;

	(void)ps;
	(void)errstr;
	(void)errstr_size;
	if (c->n_senders > 0)
		contexts_fetch(c->env.contexts);
	return true;
}

static bool chat_prepared(void *st)
{
	struct chat_state *c = st;

	return c->n_senders == 0 || contexts_done(c->env.contexts);
}

/* Each person's lead, for the turns they open. */
static void stage_leads(struct chat_state *c)
{
	buf_reset(&c->leads);
	for (size_t i = 0; i < c->n_senders; i++) {
		char digits[CHAT_PHONE_MAX + 1];
		const cJSON *ctx = NULL, *id;
		char *text, idbuf[32];

		if (!chat_phone_digits(c->senders[i], digits, sizeof(digits)) ||
		    contexts_get(c->env.contexts, CTX_NS_PHONE, digits, &ctx) !=
			CTX_FOUND)
			continue;
		id = cJSON_GetObjectItemCaseSensitive(
		    cJSON_GetObjectItemCaseSensitive(ctx, "lead"), "id");
		text = cJSON_PrintUnformatted(ctx);
		field(&c->leads, c->senders[i]);
		if (cJSON_IsString(id)) {
			field(&c->leads, id->valuestring);
		} else if (cJSON_IsNumber(id)) {
			snprintf(idbuf, sizeof(idbuf), "%.0f", id->valuedouble);
			field(&c->leads, idbuf);
		} else {
			field(&c->leads, NULL);
		}
		buf_copy_escape(&c->leads, text ? text : "null");
		buf_puts(&c->leads, "\n");
		cJSON_free(text);
	}
}

static bool chat_write(void *st, struct pgsink *ps, char *errstr,
		       size_t errstr_size)
{
	struct chat_state *c = st;
	PGresult *res;

	if (c->n_statuses > 0 &&
	    (!pgsink_copy(ps, "COPY sluice_stage_chat_status FROM STDIN",
			  &c->statuses, errstr, errstr_size) ||
	     pgsink_exec(ps, SQL_STATUSES, 0, NULL, "chat statuses", errstr,
			 errstr_size) < 0))
		return false;
	if (c->messages == 0)
		return true;
	stage_leads(c);
	if (!pgsink_copy(ps, "COPY sluice_stage_chat FROM STDIN", &c->msgs,
			 errstr, errstr_size) ||
	    !pgsink_copy(ps, "COPY sluice_stage_chat_lead FROM STDIN",
			 &c->leads, errstr, errstr_size))
		return false;
	res = pgsink_query(ps, SQL_TURNS, 0, NULL, "chat turns", errstr,
			   errstr_size);
	if (!res)
		return false;
	c->inserted = atoll(PQgetvalue(res, 0, 0));
	c->touched = atoll(PQgetvalue(res, 0, 1));
	PQclear(res);
	return true;
}

static void chat_summary(void *st, struct buf *line)
{
	struct chat_state *c = st;

	c->saved += (unsigned long long)c->inserted; /* after the commit */
	if ((long long)c->messages > c->inserted)
		c->skipped += (unsigned long long)c->messages -
			      (unsigned long long)c->inserted;
	if (c->records == 0)
		return;
	buf_printf(line,
		   "chat: %zu messages (%lld new), %zu statuses, %lld turns "
		   "touched, %zu people",
		   c->messages, c->inserted, c->n_statuses, c->touched,
		   c->n_senders);
}

static void chat_totals(void *st, unsigned long long *saved,
			unsigned long long *skipped)
{
	struct chat_state *c = st;

	*saved += c->saved;
	*skipped += c->skipped;
}

const struct handler chat_handler = {
    .kind = KIND_CHAT,
    .gather_fetches = true,
    .staging_sql = SQL_STAGING,
    .create = chat_create,
    .destroy = chat_destroy,
    .reset = chat_reset,
    .add = chat_add,
    .prepare = chat_prepare,
    .prepared = chat_prepared,
    .write = chat_write,
    .summary = chat_summary,
    .totals = chat_totals,
};
