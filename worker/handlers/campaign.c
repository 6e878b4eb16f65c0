/* Campaign batches → the outbox (campaign_messages) and the run's counters
 * (campaign_runs), with every lead's context read through the lead-context
 * service before the rows are written. */
#include "campaign.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/campaign.h"
#include "../../common/chat.h"
#include "../../common/log.h"
#include "../../common/validate.h"
#include "../contexts.h"
#include "../pgsink.h"
#include "campaign_rules.h"

static const char SQL_STAGING[] =
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_cmsg ("
    " seq bigint, run_id text, message_id text, lead_id text, status text,"
    " parts text[], error text) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_crun ("
    " seq bigint, run_id text, campaign_id text, workspace_id text,"
    " inbox_id text, end_time text, total integer)"
    " ON COMMIT DELETE ROWS;";

static const char SQL_INBOXES[] =
    "SELECT id, connected FROM inboxes WHERE id = ANY($1::text[])";

/* One statement: the run's fields (end time, total, inbox) come from its
 * first batch; the outbox rows go in (a message id already there is left
 * alone unless it is paused), and each run's counters move by exactly the
 * rows that changed, read from what the INSERT returned, so a replayed or
 * re-posted batch never counts twice. A message id belongs to the run that
 * wrote it first: a paused one re-posted under another run keeps its
 * run_id, and the counters that move are its own run's (the "own" update,
 * for runs this batch does not name), so every run's counters stay equal
 * to its outbox rows. Within one batch the same holds: a message id named
 * by several records takes the run (and lead) of the first, the outcome
 * of the last. The run finishes in the same statement when its
 * terminal messages reach its total. The end time comes as UTC text with
 * microseconds, read without floating point. */
static const char SQL_WRITE[] =
    "WITH s AS ("
    "  SELECT DISTINCT ON (message_id) message_id, status, parts, error,"
    "   first_value(run_id) OVER w AS run_id,"
    "   first_value(lead_id) OVER w AS lead_id"
    "  FROM sluice_stage_cmsg WINDOW w AS (PARTITION BY message_id"
    "   ORDER BY seq) ORDER BY message_id, seq DESC),"
    " prev AS ("
    "  SELECT m.message_id, m.status FROM campaign_messages m"
    "  JOIN s USING (message_id)),"
    " up AS ("
    "  INSERT INTO campaign_messages AS m (message_id, run_id, lead_id,"
    "   status, parts, error)"
    "  SELECT message_id, run_id, lead_id, status, parts, error FROM s"
    "  ON CONFLICT (message_id) DO UPDATE SET status = EXCLUDED.status,"
    "   parts = EXCLUDED.parts, error = EXCLUDED.error, updated_at = now()"
    "  WHERE m.status = 'paused'"
    "  RETURNING m.message_id, m.run_id, m.status),"
    " d AS ("
    "  SELECT up.run_id,"
    "   count(*) FILTER (WHERE up.status = 'ready') AS processed,"
    "   count(*) FILTER (WHERE up.status = 'failed') AS failed,"
    "   count(*) FILTER (WHERE up.status = 'expired') AS expired,"
    "   count(*) FILTER (WHERE up.status = 'paused')"
    "    - count(*) FILTER (WHERE prev.status = 'paused') AS paused,"
    "   count(*) AS changed"
    "  FROM up LEFT JOIN prev USING (message_id) GROUP BY up.run_id),"
    " r AS ("
    "  SELECT DISTINCT ON (run_id) run_id, campaign_id, workspace_id,"
    "   inbox_id, end_time, total FROM sluice_stage_crun"
    "  ORDER BY run_id, seq DESC),"
    " n AS ("
    "  SELECT r.*, coalesce(d.processed, 0) AS dp,"
    "   coalesce(d.failed, 0) AS df, coalesce(d.paused, 0) AS dpa,"
    "   coalesce(d.expired, 0) AS de, coalesce(d.changed, 0) AS dc"
    "  FROM r LEFT JOIN d USING (run_id)),"
    " ins AS ("
    "  INSERT INTO campaign_runs AS c (id, campaign_id, workspace_id,"
    "   inbox_id, end_time, total, processed, failed, paused, expired,"
    "   status, finished_at)"
    "  SELECT run_id, campaign_id, workspace_id, inbox_id,"
    "   end_time::timestamptz, total, dp, df, dpa, de,"
    "   CASE WHEN dp + df + de >= total THEN 'finished'"
    "        WHEN de > 0 THEN 'expired' WHEN dpa > 0 THEN 'paused'"
    "        ELSE 'running' END,"
    "   CASE WHEN dp + df + de >= total THEN now() END"
    "  FROM n"
    "  ON CONFLICT (id) DO UPDATE SET"
    "   processed = c.processed + EXCLUDED.processed,"
    "   failed = c.failed + EXCLUDED.failed,"
    "   paused = greatest(c.paused + EXCLUDED.paused, 0),"
    "   expired = c.expired + EXCLUDED.expired,"
    "   status = CASE"
    "    WHEN c.status = 'finished' THEN 'finished'"
    "    WHEN c.processed + EXCLUDED.processed + c.failed + EXCLUDED.failed"
    "     + c.expired + EXCLUDED.expired >= c.total THEN 'finished'"
    "    WHEN c.status = 'expired' OR EXCLUDED.expired > 0 THEN 'expired'"
    "    WHEN c.paused + EXCLUDED.paused > 0 THEN 'paused'"
    "    ELSE 'running' END,"
    "   finished_at = CASE"
    "    WHEN c.finished_at IS NOT NULL THEN c.finished_at"
    "    WHEN c.processed + EXCLUDED.processed + c.failed + EXCLUDED.failed"
    "     + c.expired + EXCLUDED.expired >= c.total THEN now() END,"
    "   updated_at = now()"
    "  RETURNING c.id, c.status),"
    " own AS ("
    "  UPDATE campaign_runs AS c SET"
    "   processed = c.processed + d.processed,"
    "   failed = c.failed + d.failed,"
    "   paused = greatest(c.paused + d.paused, 0),"
    "   expired = c.expired + d.expired,"
    "   status = CASE"
    "    WHEN c.status = 'finished' THEN 'finished'"
    "    WHEN c.processed + d.processed + c.failed + d.failed"
    "     + c.expired + d.expired >= c.total THEN 'finished'"
    "    WHEN c.status = 'expired' OR d.expired > 0 THEN 'expired'"
    "    WHEN c.paused + d.paused > 0 THEN 'paused'"
    "    ELSE 'running' END,"
    "   finished_at = CASE"
    "    WHEN c.finished_at IS NOT NULL THEN c.finished_at"
    "    WHEN c.processed + d.processed + c.failed + d.failed"
    "     + c.expired + d.expired >= c.total THEN now() END,"
    "   updated_at = now()"
    "  FROM d WHERE c.id = d.run_id"
    "   AND NOT EXISTS (SELECT 1 FROM r WHERE r.run_id = d.run_id)"
    "  RETURNING c.id, c.status, d.changed)"
    " SELECT ins.id, ins.status, n.dc FROM ins JOIN n ON n.run_id = ins.id"
    " UNION ALL SELECT id, status, changed FROM own";

struct crec {
	cJSON *doc;
	struct campaign_batch b;
	char *campaign_id;
	int64_t seq;
	int64_t received_ms;
};

struct campaign_state {
	struct handler_env env;
	struct crec *recs;
	size_t n, cap;
	char **templates; /* campaign_invalidate_keys */
	size_t n_templates;
	struct buf stage_msgs, stage_runs;
	struct rule_result res;
	/* this attempt's figures, for the log line */
	size_t messages, runs, finished, changed;
	size_t outcome[4];
	int64_t db_ms;
	unsigned long long saved, skipped; /* totals of committed batches */
};

static void *campaign_create(const struct handler_env *env)
{
	struct campaign_state *c = calloc(1, sizeof(*c));

	if (!c)
		abort();
	c->env = *env;
	c->n_templates = cache_templates_parse(
	    env->cfg->campaign_invalidate_keys, &c->templates);
	buf_init(&c->stage_msgs);
	buf_init(&c->stage_runs);
	rule_result_init(&c->res);
	return c;
}

static void campaign_reset(void *st)
{
	struct campaign_state *c = st;

	for (size_t i = 0; i < c->n; i++) {
		campaign_batch_free(&c->recs[i].b);
		cJSON_Delete(c->recs[i].doc);
		free(c->recs[i].campaign_id);
	}
	c->n = 0;
	c->messages = c->runs = c->finished = c->changed = 0;
	memset(c->outcome, 0, sizeof(c->outcome));
}

static void campaign_destroy(void *st)
{
	struct campaign_state *c = st;

	campaign_reset(c);
	free(c->recs);
	cache_templates_free(c->templates, c->n_templates);
	buf_free(&c->stage_msgs);
	buf_free(&c->stage_runs);
	rule_result_free(&c->res);
	free(c);
}

static bool campaign_add(void *st, const struct record *r, char *reason,
			 size_t reason_size)
{
	struct campaign_state *c = st;
	struct campaign_error err = {0};
	size_t n_errs = 0;
	struct crec *cr;
	cJSON *doc = cJSON_ParseWithLength(r->value, r->len);

	if (!doc) {
		snprintf(reason, reason_size, "value is not JSON");
		return false;
	}
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->recs = realloc(c->recs, c->cap * sizeof(*c->recs));
		if (!c->recs)
			abort();
	}
	cr = &c->recs[c->n];
	memset(cr, 0, sizeof(*cr));
	if (!json_check(r->value, r->len, doc, err.path, sizeof(err.path),
			err.message, sizeof(err.message)) ||
	    !campaign_parse(doc, 0, &cr->b, &err, 1, &n_errs)) {
		snprintf(reason, reason_size, "%s %s", err.path, err.message);
		campaign_batch_free(&cr->b);
		cJSON_Delete(doc);
		return false;
	}
	cr->doc = doc;
	cr->seq = r->seq;
	cr->received_ms = r->received_ms;
	cr->campaign_id =
	    strdup(r->campaign_id && r->campaign_id[0] ? r->campaign_id
		   : cr->b.campaign_id		       ? cr->b.campaign_id
						       : "");
	c->n++;
	for (size_t i = 0; i < cr->b.n_messages; i++)
		contexts_want(c->env.contexts, CTX_NS_LEAD,
			      cr->b.messages[i].lead_id);
	c->messages += cr->b.n_messages;
	return true;
}

static void campaign_prepare(void *st)
{
	struct campaign_state *c = st;

	if (c->n > 0)
		contexts_fetch(c->env.contexts);
}

static bool campaign_prepared(void *st)
{
	struct campaign_state *c = st;

	return c->n == 0 || contexts_done(c->env.contexts);
}

/* {"a","b"}: a text[] literal for a query parameter. */
static char *text_array(const char *const *v, size_t n)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "{");
	for (size_t i = 0; i < n; i++) {
		buf_puts(&b, i ? ",\"" : "\"");
		for (const char *s = v[i]; *s; s++) {
			if (*s == '"' || *s == '\\')
				buf_append(&b, "\\", 1);
			buf_append(&b, s, 1);
		}
		buf_puts(&b, "\"");
	}
	buf_puts(&b, "}");
	return b.data;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* inbox id → state, for the batch's inboxes (one query). */
struct inbox_map {
	const char **ids;
	enum inbox_state *state;
	size_t n;
};

static bool load_inboxes(struct campaign_state *c, struct pgsink *ps,
			 struct inbox_map *m, char *errstr, size_t errstr_size)
{
	size_t u = 0;
	char *arr;
	const char *params[1];
	PGresult *res;

	m->ids = calloc(c->n + 1, sizeof(*m->ids));
	m->state = calloc(c->n + 1, sizeof(*m->state));
	if (!m->ids || !m->state)
		abort();
	for (size_t i = 0; i < c->n; i++)
		m->ids[i] = c->recs[i].b.inbox_id;
	qsort(m->ids, c->n, sizeof(*m->ids), cmp_str);
	for (size_t i = 0; i < c->n; i++)
		if (u == 0 || strcmp(m->ids[u - 1], m->ids[i]) != 0)
			m->ids[u++] = m->ids[i];
	m->n = u;
	arr = text_array(m->ids, u);
	params[0] = arr;
	res = pgsink_query(ps, SQL_INBOXES, 1, params, "inboxes", errstr,
			   errstr_size);
	free(arr);
	if (!res)
		return false;
	for (int r = 0; r < PQntuples(res); r++) {
		const char *id = PQgetvalue(res, r, 0);
		const char **hit =
		    bsearch(&id, m->ids, m->n, sizeof(*m->ids), cmp_str);

		if (hit)
			m->state[hit - m->ids] = PQgetvalue(res, r, 1)[0] == 't'
						     ? INBOX_CONNECTED
						     : INBOX_DISCONNECTED;
	}
	PQclear(res);
	return true;
}

static enum inbox_state inbox_of(const struct inbox_map *m, const char *id)
{
	const char **hit = bsearch(&id, m->ids, m->n, sizeof(*m->ids), cmp_str);

	return hit ? m->state[hit - m->ids] : INBOX_MISSING;
}

static void copy_field(struct buf *b, const char *s, bool last)
{
	buf_copy_escape(b, s);
	buf_puts(b, last ? "\n" : "\t");
}

/* Evaluates every message and stages its row and its run's. */
static void stage_rows(struct campaign_state *c, const struct inbox_map *m)
{
	int64_t now = util_now_ms();

	buf_reset(&c->stage_msgs);
	buf_reset(&c->stage_runs);
	for (size_t i = 0; i < c->n; i++) {
		const struct crec *cr = &c->recs[i];
		struct rule_input in = {
		    .now_ms = c->env.record_clock && cr->received_ms > 0
				  ? cr->received_ms
				  : now,
		    .end_time_ms = cr->b.end_time_ms,
		    .inbox = inbox_of(m, cr->b.inbox_id),
		    .template_text = cr->b.template_text,
		    .max_split_parts = cr->b.max_split_parts,
		    .split_max_chars = cr->b.split_max_chars,
		};
		char end_time[CAMPAIGN_TIME_TEXT];

		buf_printf(&c->stage_runs, "%lld\t", (long long)cr->seq);
		copy_field(&c->stage_runs, cr->b.run_id, false);
		copy_field(&c->stage_runs, cr->campaign_id, false);
		copy_field(&c->stage_runs, cr->b.workspace_id, false);
		copy_field(&c->stage_runs, cr->b.inbox_id, false);
		campaign_time_format(cr->b.end_time_us, end_time);
		buf_printf(&c->stage_runs, "%s\t%lld\n", end_time,
			   cr->b.run_total);
		for (size_t k = 0; k < cr->b.n_messages; k++) {
			const struct campaign_message *msg = &cr->b.messages[k];
			const cJSON *ctx = NULL;
			enum ctx_state cs = contexts_get(
			    c->env.contexts, CTX_NS_LEAD, msg->lead_id, &ctx);

			in.lead = cs == CTX_FOUND	? LEAD_FOUND
				  : cs == CTX_NOT_FOUND ? LEAD_NOT_FOUND
				  : cs == CTX_INVALID	? LEAD_INVALID
							: LEAD_UNAVAILABLE;
			in.ctx = ctx;
			in.vars = msg->vars;
			campaign_evaluate(&in, &c->res);
			c->outcome[c->res.status]++;
			buf_printf(&c->stage_msgs, "%lld\t",
				   (long long)cr->seq);
			copy_field(&c->stage_msgs, cr->b.run_id, false);
			copy_field(&c->stage_msgs, msg->message_id, false);
			copy_field(&c->stage_msgs, msg->lead_id, false);
			copy_field(&c->stage_msgs,
				   msg_status_names[c->res.status], false);
			if (c->res.status == MSG_READY)
				campaign_parts_copy(&c->res, &c->stage_msgs);
			else
				buf_puts(&c->stage_msgs, "\\N");
			buf_puts(&c->stage_msgs, "\t");
			if (c->res.error[0])
				copy_field(&c->stage_msgs, c->res.error, true);
			else
				buf_puts(&c->stage_msgs, "\\N\n");
		}
	}
}

static bool campaign_write(void *st, struct pgsink *ps, char *errstr,
			   size_t errstr_size)
{
	struct campaign_state *c = st;
	struct inbox_map m = {NULL, NULL, 0};
	PGresult *res = NULL;
	int64_t t0 = util_mono_ms();
	bool ok = false;

	memset(c->outcome, 0, sizeof(c->outcome));
	c->runs = c->finished = c->changed = 0;
	if (c->n == 0)
		return true;
	if (!load_inboxes(c, ps, &m, errstr, errstr_size))
		goto done;
	stage_rows(c, &m);
	if (!pgsink_copy(ps, "COPY sluice_stage_crun FROM STDIN",
			 &c->stage_runs, errstr, errstr_size) ||
	    !pgsink_copy(ps, "COPY sluice_stage_cmsg FROM STDIN",
			 &c->stage_msgs, errstr, errstr_size))
		goto done;
	res = pgsink_query(ps, SQL_WRITE, 0, NULL, "campaign rows", errstr,
			   errstr_size);
	if (!res)
		goto done;
	for (int r = 0; r < PQntuples(res); r++) {
		c->runs++;
		c->finished += strcmp(PQgetvalue(res, r, 1), "finished") == 0;
		c->changed += (size_t)atoll(PQgetvalue(res, r, 2));
	}
	ok = true;
done:
	if (res)
		PQclear(res);
	free(m.ids);
	free(m.state);
	c->db_ms = util_mono_ms() - t0;
	return ok;
}

static void campaign_keys(void *st, struct cache_keys *out)
{
	struct campaign_state *c = st;

	for (size_t i = 0; i < c->n; i++)
		cache_keys_add(out, c->templates, c->n_templates, "{run_id}",
			       c->recs[i].b.run_id);
}

static void campaign_summary(void *st, struct buf *line)
{
	struct campaign_state *c = st;
	const struct contexts_stats *s = contexts_stats(c->env.contexts);

	c->saved += c->changed; /* runs after the commit only */
	c->skipped += c->messages > c->changed ? c->messages - c->changed : 0;
	if (c->n == 0)
		return;
	buf_printf(line,
		   "campaign: %zu runs (%zu finished), %zu messages (%zu "
		   "changed), %zu leads, cache %zu hits %zu misses %zu lease "
		   "waits %zu redis errors, %zu lookups (peak %d in flight, "
		   "%lld ms, %zu invalid, %zu over budget, %zu cancelled), "
		   "%zu ready %zu failed %zu paused %zu expired",
		   c->runs, c->finished, c->messages, c->changed, s->leads,
		   s->hits, s->misses, s->lease_waits, s->redis_errors,
		   s->lookups, s->peak_inflight, (long long)s->ms, s->invalid,
		   s->over_budget, s->cancels, c->outcome[MSG_READY],
		   c->outcome[MSG_FAILED], c->outcome[MSG_PAUSED],
		   c->outcome[MSG_EXPIRED]);
}

static void campaign_totals(void *st, unsigned long long *saved,
			    unsigned long long *skipped)
{
	struct campaign_state *c = st;

	*saved += c->saved;
	*skipped += c->skipped;
}

const struct handler campaign_handler = {
    .kind = "campaign",
    .staging_sql = SQL_STAGING,
    .create = campaign_create,
    .destroy = campaign_destroy,
    .reset = campaign_reset,
    .add = campaign_add,
    .prepare = campaign_prepare,
    .prepared = campaign_prepared,
    .write = campaign_write,
    .keys = campaign_keys,
    .summary = campaign_summary,
    .totals = campaign_totals,
};

/* ------------------------------------------------------------ lead_updated */

struct lead_updates {
	char **ids; /* lead ids, or phone digits where phone[i] */
	bool *phone;
	size_t n, cap;
};

static void *lead_updated_create(const struct handler_env *env)
{
	struct lead_updates *u = calloc(1, sizeof(*u));

	(void)env;
	if (!u)
		abort();
	return u;
}

static void lead_updated_reset(void *st)
{
	struct lead_updates *u = st;

	for (size_t i = 0; i < u->n; i++)
		free(u->ids[i]);
	u->n = 0;
}

static void lead_updated_destroy(void *st)
{
	struct lead_updates *u = st;

	lead_updated_reset(u);
	free(u->ids);
	free(u->phone);
	free(u);
}

static void lead_update_push(struct lead_updates *u, char *key, bool phone)
{
	if (u->n == u->cap) {
		u->cap = u->cap ? u->cap * 2 : 16;
		u->ids = realloc(u->ids, u->cap * sizeof(char *));
		u->phone = realloc(u->phone, u->cap * sizeof(bool));
		if (!u->ids || !u->phone)
			abort();
	}
	u->phone[u->n] = phone;
	u->ids[u->n++] = key;
}

static bool lead_updated_add(void *st, const struct record *r, char *reason,
			     size_t reason_size)
{
	struct lead_updates *u = st;
	cJSON *doc = cJSON_ParseWithLength(r->value, r->len);
	char text[24], path[96], msg[160];
	const char *id;

	if (!doc ||
	    !json_check(r->value, r->len, doc, path, sizeof(path), msg,
			sizeof(msg)) ||
	    !lead_update_parse(doc, &id, text, path, sizeof(path), msg,
			       sizeof(msg))) {
		snprintf(reason, reason_size, "%s %s", doc ? path : "$",
			 doc ? msg : "value is not JSON");
		cJSON_Delete(doc);
		return false;
	}
	lead_update_push(u, strdup(id), false);
	/* The context read by phone (chat) goes too, when the update says
	 * which phone. */
	{
		const cJSON *ph =
		    cJSON_GetObjectItemCaseSensitive(doc, "phone");
		char digits[80];

		if (cJSON_IsString(ph) &&
		    chat_phone_digits(ph->valuestring, digits, sizeof(digits)))
			lead_update_push(u, strdup(digits), true);
	}
	cJSON_Delete(doc);
	return true;
}

/* The context goes, and its version moves so a fill that began before
 * this update cannot put the old context back. */
static void lead_updated_keys(void *st, struct cache_keys *out)
{
	struct lead_updates *u = st;
	static char *const ctx_key[] = {(char *)"lead_ctx:{lead_id}"};
	static char *const phone_key[] = {(char *)"lead_phone_ctx:{phone}"};

	for (size_t i = 0; i < u->n; i++) {
		bool phone = u->phone[i];
		const char *id = u->ids[i];
		char ver[300];

		snprintf(ver, sizeof(ver), "%s%s",
			 phone ? "lead_phone_ctx_ver:" : "lead_ctx_ver:", id);
		cache_keys_bump(out, ver);
		cache_keys_add(out, phone ? phone_key : ctx_key, 1,
			       phone ? "{phone}" : "{lead_id}", id);
	}
}

static void lead_updated_summary(void *st, struct buf *line)
{
	struct lead_updates *u = st;

	if (u->n > 0)
		buf_printf(line, "%zu lead contexts invalidated", u->n);
}

const struct handler lead_updated_handler = {
    .kind = "lead_updated",
    .create = lead_updated_create,
    .destroy = lead_updated_destroy,
    .reset = lead_updated_reset,
    .add = lead_updated_add,
    .keys = lead_updated_keys,
    .summary = lead_updated_summary,
};
