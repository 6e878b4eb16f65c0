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
#include "../composer.h"
#include "../contexts.h"
#include "../redisconn.h"
#include "../pgsink.h"
#include "campaign_rules.h"

static const char SQL_STAGING[] =
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_cmsg ("
    " seq bigint, run_id text, message_id text, lead_id text, status text,"
    " parts text[], error text, model text, prompt_tokens integer,"
    " completion_tokens integer, compose_ms integer)"
    " ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_crun ("
    " seq bigint, run_id text, campaign_id text, workspace_id text,"
    " inbox_id text, end_time text, total integer)"
    " ON COMMIT DELETE ROWS;";

static const char SQL_INBOXES[] =
    "SELECT id, connected FROM inboxes WHERE id = ANY($1::text[])";

/* Before composing: what the outbox already holds, so a message written
 * once (any status but paused) is never sent to the model again. */
static const char SQL_OUTBOX[] =
    "SELECT message_id, status FROM campaign_messages"
    " WHERE message_id = ANY($1::text[])";

static const char SQL_WORKSPACES[] =
    "SELECT id, ai_model FROM workspaces WHERE id = ANY($1::text[])";

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
    "   model, prompt_tokens, completion_tokens, compose_ms,"
    "   first_value(run_id) OVER w AS run_id,"
    "   first_value(lead_id) OVER w AS lead_id"
    "  FROM sluice_stage_cmsg WINDOW w AS (PARTITION BY message_id"
    "   ORDER BY seq) ORDER BY message_id, seq DESC),"
    " prev AS ("
    "  SELECT m.message_id, m.status FROM campaign_messages m"
    "  JOIN s USING (message_id)),"
    " up AS ("
    "  INSERT INTO campaign_messages AS m (message_id, run_id, lead_id,"
    "   status, parts, error, model, prompt_tokens, completion_tokens,"
    "   compose_ms)"
    "  SELECT message_id, run_id, lead_id, status, parts, error, model,"
    "   prompt_tokens, completion_tokens, compose_ms FROM s"
    "  ON CONFLICT (message_id) DO UPDATE SET status = EXCLUDED.status,"
    "   parts = EXCLUDED.parts, error = EXCLUDED.error,"
    "   model = EXCLUDED.model, prompt_tokens = EXCLUDED.prompt_tokens,"
    "   completion_tokens = EXCLUDED.completion_tokens,"
    "   compose_ms = EXCLUDED.compose_ms, updated_at = now()"
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

/* id → text, sorted by id: a batch's outbox statuses, its workspaces'
 * models. */
struct idmap {
	char **ids;
	char **vals; /* NULL: none */
	size_t n;
};

/* A message by its lead, for starting compositions as leads resolve. */
struct lead_msg {
	const char *lead_id;
	uint32_t rec, msg;
};

struct inbox_map {
	const char **ids;
	enum inbox_state *state;
	size_t n;
};

struct campaign_state {
	struct handler_env env;
	struct crec *recs;
	size_t n, cap;
	/* composition: what prepare() read, and the messages by lead */
	bool composing;
	bool prepared_ok;
	struct inbox_map inboxes;
	struct idmap outbox, models;
	struct lead_msg *by_lead;
	size_t n_by_lead;
	struct buf sys, user;
	int64_t now_ms;
	struct cache_templates templates; /* campaign_invalidate_* */
	struct buf stage_msgs, stage_runs;
	struct rule_result res;
	/* this attempt's figures, for the log line */
	size_t messages, runs, finished, changed;
	size_t outcome[4];
	int64_t db_ms;
	unsigned long long saved, skipped; /* totals of committed batches */
};

static void idmap_free(struct idmap *m)
{
	for (size_t i = 0; i < m->n; i++) {
		free(m->ids[i]);
		free(m->vals[i]);
	}
	free(m->ids);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The value of id, NULL when absent (or NULL). found: present at all. */
static const char *idmap_get(const struct idmap *m, const char *id, bool *found)
{
	char **hit =
	    m->n ? bsearch(&id, m->ids, m->n, sizeof(*m->ids), cmp_str) : NULL;

	if (found)
		*found = hit != NULL;
	return hit ? m->vals[hit - m->ids] : NULL;
}

/* Sorted unique copies of ids[0..n) as the map's keys, no values. */
static void idmap_keys(struct idmap *m, const char **ids, size_t n)
{
	size_t u = 0;

	idmap_free(m);
	qsort(ids, n, sizeof(*ids), cmp_str);
	m->ids = xcalloc(n + 1, sizeof(*m->ids));
	m->vals = xcalloc(n + 1, sizeof(*m->vals));
	for (size_t i = 0; i < n; i++)
		if (u == 0 || strcmp(m->ids[u - 1], ids[i]) != 0)
			m->ids[u++] = xstrdup(ids[i]);
	m->n = u;
}

static void idmap_set(struct idmap *m, const char *id, const char *val)
{
	char **hit =
	    m->n ? bsearch(&id, m->ids, m->n, sizeof(*m->ids), cmp_str) : NULL;

	if (hit) {
		free(m->vals[hit - m->ids]);
		m->vals[hit - m->ids] = val ? xstrdup(val) : NULL;
	}
}

/* One query for every key of the map: id → the second column. */
static bool idmap_load(struct idmap *m, struct pgsink *ps, const char *sql,
		       const char *what, char *errstr, size_t errstr_size)
{
	struct buf arr;
	const char *params[1];
	PGresult *res;

	if (m->n == 0)
		return true;
	buf_init(&arr);
	buf_pg_array(&arr, (const char *const *)m->ids, m->n);
	params[0] = arr.data;
	res = pgsink_query(ps, sql, 1, params, what, errstr, errstr_size);
	buf_free(&arr);
	if (!res)
		return false;
	for (int r = 0; r < PQntuples(res); r++)
		idmap_set(m, PQgetvalue(res, r, 0),
			  PQgetisnull(res, r, 1) ? NULL
						 : PQgetvalue(res, r, 1));
	PQclear(res);
	return true;
}

static void on_lead(void *arg, enum ctx_ns ns, const char *lead_id);

static void *campaign_create(const struct handler_env *env)
{
	struct campaign_state *c = xcalloc(1, sizeof(*c));

	c->env = *env;
	cache_templates_load(&c->templates, env->cfg->campaign_invalidate_keys,
			     env->cfg->campaign_invalidate_generation,
			     env->cfg->campaign_invalidate_index);
	buf_init(&c->stage_msgs);
	buf_init(&c->stage_runs);
	buf_init(&c->sys);
	buf_init(&c->user);
	rule_result_init(&c->res);
	if (env->composer)
		contexts_set_listener(env->contexts, on_lead, c);
	return c;
}

static void inbox_map_free(struct inbox_map *m)
{
	free(m->ids);
	free(m->state);
	memset(m, 0, sizeof(*m));
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
	c->composing = c->prepared_ok = false;
	inbox_map_free(&c->inboxes);
	idmap_free(&c->outbox);
	idmap_free(&c->models);
	free(c->by_lead);
	c->by_lead = NULL;
	c->n_by_lead = 0;
}

static void campaign_destroy(void *st)
{
	struct campaign_state *c = st;

	campaign_reset(c);
	free(c->recs);
	cache_templates_clear(&c->templates);
	buf_free(&c->stage_msgs);
	buf_free(&c->stage_runs);
	buf_free(&c->sys);
	buf_free(&c->user);
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
		c->recs = xrealloc(c->recs, c->cap * sizeof(*c->recs));
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
	    xstrdup(r->campaign_id && r->campaign_id[0] ? r->campaign_id
		    : cr->b.campaign_id			? cr->b.campaign_id
							: "");
	c->n++;
	for (size_t i = 0; i < cr->b.n_messages; i++)
		contexts_want(c->env.contexts, CTX_NS_LEAD,
			      cr->b.messages[i].lead_id);
	c->messages += cr->b.n_messages;
	return true;
}

/* inbox id → state, for the batch's inboxes (one query). */
static bool load_inboxes(struct campaign_state *c, struct pgsink *ps,
			 struct inbox_map *m, char *errstr, size_t errstr_size)
{
	size_t u = 0;
	struct buf arr;
	const char *params[1];
	PGresult *res;

	m->ids = xcalloc(c->n + 1, sizeof(*m->ids));
	m->state = xcalloc(c->n + 1, sizeof(*m->state));
	for (size_t i = 0; i < c->n; i++)
		m->ids[i] = c->recs[i].b.inbox_id;
	qsort(m->ids, c->n, sizeof(*m->ids), cmp_str);
	for (size_t i = 0; i < c->n; i++)
		if (u == 0 || strcmp(m->ids[u - 1], m->ids[i]) != 0)
			m->ids[u++] = m->ids[i];
	m->n = u;
	buf_init(&arr);
	buf_pg_array(&arr, m->ids, u);
	params[0] = arr.data;
	res = pgsink_query(ps, SQL_INBOXES, 1, params, "inboxes", errstr,
			   errstr_size);
	buf_free(&arr);
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
	const char **hit =
	    m->n ? bsearch(&id, m->ids, m->n, sizeof(*m->ids), cmp_str) : NULL;

	return hit ? m->state[hit - m->ids] : INBOX_MISSING;
}

/* ------------------------------------------------------ composition */

static int cmp_lead_msg(const void *a, const void *b)
{
	return strcmp(((const struct lead_msg *)a)->lead_id,
		      ((const struct lead_msg *)b)->lead_id);
}

/* The model of a record's messages: the batch's, the workspace's, the
 * configured default; NULL: none. */
static const char *model_of(const struct campaign_state *c,
			    const struct crec *cr)
{
	const char *m;

	if (cr->b.model)
		return cr->b.model;
	m = idmap_get(&c->models, cr->b.workspace_id, NULL);
	if (m && m[0])
		return m;
	return c->env.cfg->composer_default_model[0]
		   ? c->env.cfg->composer_default_model
		   : NULL;
}

static void rule_input_of(const struct campaign_state *c, const struct crec *cr,
			  const struct inbox_map *m, int64_t now,
			  struct rule_input *in)
{
	memset(in, 0, sizeof(*in));
	in->now_ms =
	    c->env.record_clock && cr->received_ms > 0 ? cr->received_ms : now;
	in->end_time_ms = cr->b.end_time_ms;
	in->inbox = inbox_of(m, cr->b.inbox_id);
	in->template_text = cr->b.template_text;
	in->prompt_system = cr->b.prompt_system;
	in->prompt_user = cr->b.prompt_user;
	in->has_model = cr->b.prompt_user && model_of(c, cr) != NULL;
	in->max_split_parts = cr->b.max_split_parts;
	in->split_max_chars = cr->b.split_max_chars;
}

static void lead_input(const struct campaign_state *c,
		       const struct campaign_message *msg,
		       struct rule_input *in)
{
	const cJSON *ctx = NULL;
	enum ctx_state cs =
	    contexts_get(c->env.contexts, CTX_NS_LEAD, msg->lead_id, &ctx);

	in->lead = cs == CTX_FOUND	 ? LEAD_FOUND
		   : cs == CTX_NOT_FOUND ? LEAD_NOT_FOUND
		   : cs == CTX_INVALID	 ? LEAD_INVALID
					 : LEAD_UNAVAILABLE;
	in->ctx = ctx;
	in->vars = msg->vars;
}

/* A message whose lead just resolved: sent to the model if the rules
 * get it as far as its text and the outbox does not hold it already. */
static void compose_msg(struct campaign_state *c, const struct crec *cr,
			const struct campaign_message *msg)
{
	struct rule_input in;
	struct compose_req req;
	const char *st = idmap_get(&c->outbox, msg->message_id, NULL);

	/* st: the outbox's status, NULL when the message is not there */
	if (!cr->b.prompt_user || (st && strcmp(st, "paused") != 0))
		return;
	rule_input_of(c, cr, &c->inboxes, c->now_ms, &in);
	lead_input(c, msg, &in);
	if (!campaign_precheck(&in, &c->res) ||
	    !campaign_render_prompt(&in, &c->sys, &c->user, &c->res) ||
	    !in.has_model)
		return; /* decided without a call: written so at write() */
	req = (struct compose_req){
	    .model = model_of(c, cr),
	    .system = c->sys.len ? c->sys.data : NULL,
	    .user = c->user.data,
	    .max_tokens = cr->b.max_tokens,
	    .temperature = cr->b.temperature,
	    .has_temperature = cr->b.has_temperature,
	};
	composer_want(c->env.composer, msg->message_id, &req);
}

/* contexts' listener: a lead resolved, its messages start composing. */
static void on_lead(void *arg, enum ctx_ns ns, const char *lead_id)
{
	struct campaign_state *c = arg;
	struct lead_msg key = {.lead_id = lead_id};
	struct lead_msg *hit;

	if (ns != CTX_NS_LEAD || !c->prepared_ok || c->n_by_lead == 0)
		return;
	hit =
	    bsearch(&key, c->by_lead, c->n_by_lead, sizeof(key), cmp_lead_msg);
	if (!hit)
		return;
	while (hit > c->by_lead && strcmp(hit[-1].lead_id, lead_id) == 0)
		hit--;
	for (; hit < c->by_lead + c->n_by_lead &&
	       strcmp(hit->lead_id, lead_id) == 0;
	     hit++) {
		const struct crec *cr = &c->recs[hit->rec];

		compose_msg(c, cr, &cr->b.messages[hit->msg]);
	}
}

static void model_got(void *arg, const redisReply *r)
{
	char **slot = arg;

	if (r && r->type == REDIS_REPLY_STRING) {
		cJSON *doc = cJSON_ParseWithLength(r->str, r->len);
		const cJSON *m =
		    cJSON_GetObjectItemCaseSensitive(doc, "ai_model");

		if (cJSON_IsObject(doc) &&
		    (cJSON_IsString(m) || cJSON_IsNull(m)))
			*slot =
			    xstrdup(cJSON_IsString(m) ? m->valuestring : "");
		cJSON_Delete(doc);
	}
	slot[1] = (char *)1; /* answered */
}

static void model_stored(void *arg, const redisReply *r)
{
	(void)arg;
	(void)r;
}

/* The workspaces' models, for the batches with a prompt and no model:
 * workspace:{id} in Redis ({"ai_model": ...}), else workspaces in
 * PostgreSQL (one query), stored back with composer.model_cache_ttl_s. */
static bool load_models(struct campaign_state *c, struct pgsink *ps,
			char *errstr, size_t errstr_size)
{
	const char **ids = xcalloc(c->n + 1, sizeof(*ids));
	size_t n = 0, misses = 0;
	char **got;
	struct idmap *m = &c->models;

	for (size_t i = 0; i < c->n; i++)
		if (c->recs[i].b.prompt_user && !c->recs[i].b.model)
			ids[n++] = c->recs[i].b.workspace_id;
	idmap_keys(m, ids, n);
	free(ids);
	if (m->n == 0)
		return true;
	/* got[2i]: the model read, got[2i+1]: answered */
	got = xcalloc(2 * m->n, sizeof(*got));
	if (c->env.redis) {
		int pending = 0;

		for (size_t i = 0; i < m->n; i++) {
			struct buf key;
			const char *argv[2];

			buf_init(&key);
			buf_printf(&key, "workspace:%s", m->ids[i]);
			argv[0] = "GET";
			argv[1] = key.data;
			if (rconn_command(c->env.redis, model_got, &got[2 * i],
					  2, argv, NULL))
				pending++;
			else
				got[2 * i + 1] = (char *)1;
			buf_free(&key);
		}
		/* Bounded by redis_timeout_ms: an overdue reply fails. */
		while (pending > 0) {
			pending = 0;
			for (size_t i = 0; i < m->n; i++)
				pending += got[2 * i + 1] == NULL;
			if (pending > 0)
				event_base_loop(c->env.base, EVLOOP_ONCE);
		}
	}
	for (size_t i = 0; i < m->n; i++) {
		if (got[2 * i]) {
			m->vals[i] = got[2 * i]; /* the map owns it now */
			got[2 * i] = NULL;
			continue;
		}
		misses++;
	}
	free(got);
	if (misses == 0)
		return true;
	{
		/* The misses, from the table; hits keep their values. */
		struct idmap miss = {0};
		const char **mids = xcalloc(misses + 1, sizeof(*mids));
		size_t k = 0;

		for (size_t i = 0; i < m->n; i++)
			if (!m->vals[i])
				mids[k++] = m->ids[i];
		idmap_keys(&miss, mids, k);
		free(mids);
		if (!idmap_load(&miss, ps, SQL_WORKSPACES, "workspaces", errstr,
				errstr_size)) {
			idmap_free(&miss);
			return false;
		}
		for (size_t i = 0; i < miss.n; i++) {
			cJSON *o = cJSON_CreateObject();
			char *json, ttl[16];
			struct buf key;
			const char *argv[5];

			if (miss.vals[i])
				cJSON_AddStringToObject(o, "ai_model",
							miss.vals[i]);
			else
				cJSON_AddNullToObject(o, "ai_model");
			json = cJSON_PrintUnformatted(o);
			cJSON_Delete(o);
			if (!json)
				abort();
			idmap_set(m, miss.ids[i],
				  miss.vals[i] ? miss.vals[i] : "");
			if (c->env.redis) {
				buf_init(&key);
				buf_printf(&key, "workspace:%s", miss.ids[i]);
				snprintf(
				    ttl, sizeof(ttl), "%d",
				    c->env.cfg->composer_model_cache_ttl_s);
				argv[0] = "SET";
				argv[1] = key.data;
				argv[2] = json;
				argv[3] = "EX";
				argv[4] = ttl;
				(void)rconn_command(c->env.redis, model_stored,
						    NULL, 5, argv, NULL);
				buf_free(&key);
			}
			free(json);
		}
		idmap_free(&miss);
	}
	return true;
}

/* Before the lookups: what composition needs to decide per message
 * (inboxes, the outbox, the models), then the messages by lead. */
static bool prepare_compose(struct campaign_state *c, struct pgsink *ps,
			    char *errstr, size_t errstr_size)
{
	const char **ids;
	size_t n = 0;

	c->composing = false;
	for (size_t i = 0; i < c->n; i++)
		if (c->recs[i].b.prompt_user)
			n += c->recs[i].b.n_messages;
	if (n == 0)
		return true;
	c->composing = true;
	c->now_ms = util_now_ms();
	inbox_map_free(&c->inboxes);
	if (!load_inboxes(c, ps, &c->inboxes, errstr, errstr_size))
		return false;
	ids = xcalloc(n + 1, sizeof(*ids));
	free(c->by_lead);
	c->by_lead = xcalloc(n + 1, sizeof(*c->by_lead));
	c->n_by_lead = 0;
	for (size_t i = 0; i < c->n; i++) {
		const struct crec *cr = &c->recs[i];

		if (!cr->b.prompt_user)
			continue;
		for (size_t k = 0; k < cr->b.n_messages; k++) {
			ids[c->n_by_lead] = cr->b.messages[k].message_id;
			c->by_lead[c->n_by_lead++] =
			    (struct lead_msg){cr->b.messages[k].lead_id,
					      (uint32_t)i, (uint32_t)k};
		}
	}
	qsort(c->by_lead, c->n_by_lead, sizeof(*c->by_lead), cmp_lead_msg);
	idmap_keys(&c->outbox, ids, n);
	free(ids);
	return idmap_load(&c->outbox, ps, SQL_OUTBOX, "outbox", errstr,
			  errstr_size) &&
	       load_models(c, ps, errstr, errstr_size);
}

static bool campaign_prepare(void *st, struct pgsink *ps, char *errstr,
			     size_t errstr_size)
{
	struct campaign_state *c = st;

	if (c->n == 0)
		return true;
	if (c->env.composer && !prepare_compose(c, ps, errstr, errstr_size))
		return false;
	c->prepared_ok = c->composing;
	contexts_fetch(c->env.contexts);
	/* Leads resolved before (an earlier attempt at this batch): their
	 * messages start now; the composer knows the ones it has. */
	for (size_t i = 0; c->composing && i < c->n_by_lead; i++) {
		const struct crec *cr = &c->recs[c->by_lead[i].rec];
		const struct campaign_message *msg =
		    &cr->b.messages[c->by_lead[i].msg];

		const cJSON *ctx;

		if (contexts_get(c->env.contexts, CTX_NS_LEAD, msg->lead_id,
				 &ctx) != CTX_PENDING)
			compose_msg(c, cr, msg);
	}
	return true;
}

static bool campaign_prepared(void *st)
{
	struct campaign_state *c = st;

	return c->n == 0 || (contexts_done(c->env.contexts) &&
			     (!c->composing || composer_done(c->env.composer)));
}

static void copy_field(struct buf *b, const char *s, bool last)
{
	buf_copy_escape(b, s);
	buf_puts(b, last ? "\n" : "\t");
}

/* The model's figures of a composed message, or four \N. */
static void copy_compose(struct buf *b, const struct compose_result *r)
{
	if (!r || r->state == COMPOSE_PENDING) {
		buf_puts(b, "\\N\t\\N\t\\N\t\\N\n");
		return;
	}
	if (r->model && r->model[0])
		copy_field(b, r->model, false);
	else
		buf_puts(b, "\\N\t");
	if (r->prompt_tokens >= 0)
		buf_printf(b, "%ld\t", r->prompt_tokens);
	else
		buf_puts(b, "\\N\t");
	if (r->completion_tokens >= 0)
		buf_printf(b, "%ld\t", r->completion_tokens);
	else
		buf_puts(b, "\\N\t");
	if (r->ms >= 0) /* no call made: NULL */
		buf_printf(
		    b, "%lld\n",
		    (long long)(r->ms < 2147483647 ? r->ms : 2147483647));
	else
		buf_puts(b, "\\N\n");
}

/* Evaluates every message and stages its row and its run's. */
static void stage_rows(struct campaign_state *c, const struct inbox_map *m)
{
	int64_t now = util_now_ms();

	buf_reset(&c->stage_msgs);
	buf_reset(&c->stage_runs);
	for (size_t i = 0; i < c->n; i++) {
		const struct crec *cr = &c->recs[i];
		struct rule_input in;
		char end_time[CAMPAIGN_TIME_TEXT];

		/* A batch composed by the model is judged on the inboxes it
		 * was composed against: an inbox reconnected since would
		 * otherwise turn a message that was paused (and not sent to
		 * the model) into one that failed for want of its text. */
		rule_input_of(
		    c, cr, cr->b.prompt_user && c->composing ? &c->inboxes : m,
		    now, &in);
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
			const struct compose_result *cres = NULL;

			lead_input(c, msg, &in);
			in.composed = NULL;
			in.compose_error = NULL;
			if (cr->b.prompt_user && c->env.composer) {
				cres = composer_get(c->env.composer,
						    msg->message_id);
				if (cres && cres->state == COMPOSE_OK)
					in.composed = cres->text;
				else if (cres && cres->state != COMPOSE_PENDING)
					in.compose_error = cres->error;
			}
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
				copy_field(&c->stage_msgs, c->res.error, false);
			else
				buf_puts(&c->stage_msgs, "\\N\t");
			copy_compose(&c->stage_msgs, cres);
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
	inbox_map_free(&m);
	c->db_ms = util_mono_ms() - t0;
	return ok;
}

static void campaign_keys(void *st, struct cache_keys *out)
{
	struct campaign_state *c = st;

	for (size_t i = 0; i < c->n; i++)
		cache_keys_expand(out, &c->templates, "{run_id}",
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
	if (c->composing) {
		const struct composer_stats *cs =
		    composer_stats(c->env.composer);

		buf_printf(
		    line,
		    ", composed %zu (%zu calls, %zu tokens, peak %d in "
		    "flight, %lld ms%s)",
		    cs->composed, cs->calls, cs->tokens, cs->peak_inflight,
		    (long long)(cs->first_ms && cs->last_ms > cs->first_ms
				    ? cs->last_ms - cs->first_ms
				    : 0),
		    cs->held_ms ? ", held" : "");
	}
}

static void campaign_totals(void *st, unsigned long long *saved,
			    unsigned long long *skipped)
{
	struct campaign_state *c = st;

	*saved += c->saved;
	*skipped += c->skipped;
}

const struct handler campaign_handler = {
    .kind = KIND_CAMPAIGN,
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
	struct lead_updates *u = xcalloc(1, sizeof(*u));

	(void)env;
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
		u->ids = xrealloc(u->ids, u->cap * sizeof(char *));
		u->phone = xrealloc(u->phone, u->cap * sizeof(bool));
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
	lead_update_push(u, xstrdup(id), false);
	/* The context read by phone (chat) goes too, when the update says
	 * which phone. */
	{
		const cJSON *ph =
		    cJSON_GetObjectItemCaseSensitive(doc, "phone");
		char digits[80];

		if (cJSON_IsString(ph) &&
		    chat_phone_digits(ph->valuestring, digits, sizeof(digits)))
			lead_update_push(u, xstrdup(digits), true);
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
    .kind = KIND_LEAD_UPDATED,
    .create = lead_updated_create,
    .destroy = lead_updated_destroy,
    .reset = lead_updated_reset,
    .add = lead_updated_add,
    .keys = lead_updated_keys,
    .summary = lead_updated_summary,
};
