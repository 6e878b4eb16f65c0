/* Lead contexts, the shared service: a batch's distinct leads read through
 * Redis (cache-aside with a lease against stampedes and a version against
 * stale fills), misses fetched from the context source with at most K
 * lookups in flight, as a sliding window, all on the worker's event_base.
 *
 * A lead moves through: REDIS (MGET of its context and version, pipelined
 * with every other lead's) → LEASE (SET lock NX PX) → either QUEUED for the
 * source (lease won, Redis down, or waited too long) or WAIT (another
 * worker fills it; poll with back-off) → FOUND / NOT_FOUND / UNAVAILABLE /
 * INVALID. Every context, from the source or from Redis, is checked before
 * it is cached or used (see ctx_check). A batch's lookups end within
 * lead_context.batch_budget_ms; a PostgreSQL lookup that ends early (its
 * timeout, the budget) is cancelled on the server, never just abandoned.
 * Every callback below runs on the worker thread, inside the event_base,
 * except cancel_main (a short-lived thread of its own). */
#include "contexts.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../common/validate.h"
#include "httpc.h"
#include "redisconn.h"

/* What each way of naming a lead reads: its Redis keys, its placeholder in
 * the HTTP source's URL, its PostgreSQL function. */
static const struct ns_def {
	const char *ctx, *ver, *lock, *placeholder, *sql;
} ns_defs[CTX_NS_COUNT] = {
    [CTX_NS_LEAD] = {"lead_ctx:", "lead_ctx_ver:", "lead_ctx_lock:",
		     "{lead_id}", "SELECT get_lead_full_context($1)::text"},
    [CTX_NS_PHONE] = {"lead_phone_ctx:", "lead_phone_ctx_ver:",
		      "lead_phone_ctx_lock:", "{phone}",
		      "SELECT get_lead_context_by_phone($1)::text"},
};
#define WAIT_MIN_MS 100
#define WAIT_MAX_MS 2000
/* Cancel requests in flight at once (each a thread for a moment); past
 * it, statement_timeout alone ends the query. */
#define CANCELS_MAX 64

/* Run once on each new lookup connection: the server itself ends a lookup
 * that outlives its timeout, even if the cancel request never gets there.
 * A query, not a startup option, so poolers that refuse "options" work. */
static const char SQL_SETUP[] =
    "SELECT set_config('statement_timeout', $1, false)";

/* Fill only when no invalidation bumped the version since it was read, and
 * release the lease if it is still ours. */
static const char LUA_FILL[] =
    "local v = redis.call('GET', KEYS[2]) or ''\n"
    "if v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) "
    "end\n"
    "if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', "
    "KEYS[3]) end\n"
    "return 1";
/* Deletes KEYS[1] if it still holds ARGV[1]: our lease, or a cached
 * context found unusable (not one somebody wrote since). */
static const char LUA_RELEASE[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', "
    "KEYS[1]) end return 0";
/* A waiter's poll: the winner's fill, else the lease if it was let go. */
static const char LUA_POLL[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v then return {1, v} end\n"
    "if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then "
    "return {2} end\n"
    "return {0}";

enum lead_phase {
	PH_NEW = 0,
	PH_REDIS,
	PH_LEASE,
	PH_WAIT,
	PH_QUEUED,
	PH_FETCHING,
	PH_DONE,
};

struct lead {
	struct contexts *c;
	enum ctx_ns ns;
	char *id;
	enum lead_phase phase;
	enum ctx_state state;
	cJSON *ctx;
	char *version;	     /* lead_ctx_ver as read before fetching */
	bool version_known;  /* false: Redis was not asked, never fill */
	bool leased;	     /* we hold lead_ctx_lock */
	int attempts;	     /* source calls made */
	struct backoff wait; /* while waiting for another worker's fill */
	int64_t wait_since;  /* when waiting began (monotonic ms) */
	struct event *timer; /* lease wait */
	struct event *retry; /* next attempt at the source */
	struct lead *next;   /* source queue */
};

struct slot {
	struct contexts *c;
	struct lead *lead; /* NULL when free */
	struct event *timeout;
	/* http: the call in flight (the client pools the connections) */
	struct httpc_call *call;
	/* postgres */
	PGconn *pg;
	struct event *pg_ev;
	bool pg_ready; /* connected, no query running */
	bool pg_setup; /* the query running is SQL_SETUP */
	/* A cancelled query has not ended yet: the slot takes no lookup until
	 * it has (or DRAIN bound passed), so a worker never has more than K
	 * lookups running on the server. */
	bool draining;
};

struct contexts {
	struct event_base *base;
	const struct worker_config *cfg;
	struct rconn *redis;
	struct ticket *tickets; /* commands whose reply a lead waits for */
	char token[48];		/* this worker's lease value */
	/* the source */
	bool http;
	struct httpc *httpc;		      /* the pipeline's */
	struct evhttp_uri *uri[CTX_NS_COUNT]; /* NULL: no such source */
	char *url_origin[CTX_NS_COUNT];	      /* scheme://host[:port] */
	struct slot *slots;
	int k;
	int inflight;
	struct lead *q_head, *q_tail;
	/* the batch */
	struct lead **leads;
	size_t n_leads, cap_leads;
	size_t sorted; /* leads[0..sorted) are sorted and unique */
	size_t unresolved;
	bool resetting; /* replies arriving now belong to no batch */
	int64_t started_ms;
	struct event *budget; /* lead_context.batch_budget_ms after fetching */
	struct contexts_stats st;
	contexts_lead_fn on_lead; /* a lead resolved (the composer starts) */
	void *on_lead_arg;
};

static void pump(struct contexts *c);
static void lead_finish(struct lead *l, enum ctx_state st, cJSON *ctx);
static void lead_to_source(struct lead *l);
static void lead_store(struct lead *l, const char *json);

static char *key_of(const char *prefix, const char *id)
{
	size_t n = strlen(prefix) + strlen(id) + 1;
	char *k = xmalloc(n);

	snprintf(k, n, "%s%s", prefix, id);
	return k;
}

/* ------------------------------------------------------------ Redis */

/* A command whose reply a lead waits for. The reply may come after the
 * lead's batch was reset (a lead given up with its reply still due): the
 * ticket outlives the lead, and its reply then changes nothing. */
struct ticket {
	struct contexts *c;
	struct lead *l; /* NULL once the batch is reset */
	void (*fn)(struct lead *l, const redisReply *r);
	struct ticket *prev, *next;
};

static void ticket_unlink(struct ticket *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		t->c->tickets = t->next;
	if (t->next)
		t->next->prev = t->prev;
}

static void redis_got(struct contexts *c, const redisReply *r)
{
	if (!r) {
		c->st.redis_errors++;
	} else if (r->type == REDIS_REPLY_ERROR) {
		c->st.redis_errors++;
		log_warn("redis (lead contexts): %s", r->str);
	}
}

/* The connection layer, on the loop: a reply, or NULL when Redis went or
 * did not answer within redis_timeout_ms (the lead then goes to the
 * source). */
static void ticket_cb(void *arg, const redisReply *r)
{
	struct ticket *t = arg;

	ticket_unlink(t);
	if (t->l) {
		redis_got(t->c, r);
		t->fn(t->l, r);
	}
	free(t);
}

/* Sends a command whose reply the lead waits for; false when Redis is not
 * available (fn is then not called). */
static bool redis_send(struct contexts *c,
		       void (*fn)(struct lead *, const redisReply *),
		       struct lead *l, int argc, const char **argv)
{
	struct ticket *t = xcalloc(1, sizeof(*t));

	t->c = c;
	t->l = l;
	t->fn = fn;
	if (!rconn_command(c->redis, ticket_cb, t, argc, argv, NULL)) {
		/* Redis down (or backing off) counts as an error for each
		 * lead that had to go without it. */
		free(t);
		c->st.redis_errors++;
		return false;
	}
	t->next = c->tickets;
	if (t->next)
		t->next->prev = t;
	c->tickets = t;
	return true;
}

/* A command nobody waits for (a fill, a lease let go): sent if Redis is
 * there, else the lease runs out by itself. */
static void redis_forget(struct contexts *c, int argc, const char **argv,
			 const size_t *lens)
{
	(void)rconn_command(c->redis, NULL, NULL, argc, argv, lens);
}

/* A JSON object and nothing after it: an answer with trailing bytes is
 * not a context, whatever cJSON would make of its start. */
static cJSON *parse_ctx(const char *s, size_t len)
{
	cJSON *doc = json_parse_whole(s, len, NULL);

	if (doc && cJSON_IsObject(doc))
		return doc;
	cJSON_Delete(doc);
	return NULL;
}

/* A JSON object that parse_ctx accepted: false (and why) when its content
 * cannot be used. PostgreSQL refuses text that is not UTF-8, so one such
 * context would fail the whole batch's COPY on every retry; a NUL, raw or
 * as \u0000, would cut a value short without a word; a key given twice
 * reads differently here (first wins) and in PostgreSQL (last wins). No
 * retry can mend any of these, so the lead is not asked again. */
static bool ctx_usable(const char *s, size_t len, const cJSON *doc, char *why,
		       size_t whysz)
{
	char path[128], msg[160];

	if (memchr(s, '\0', len)) {
		snprintf(why, whysz, "a NUL byte");
		return false;
	}
	if (!util_utf8_valid(s, len)) {
		snprintf(why, whysz, "not valid UTF-8");
		return false;
	}
	if (!json_check(s, len, doc, path, sizeof(path), msg, sizeof(msg))) {
		snprintf(why, whysz, "%s: %s", path, msg);
		return false;
	}
	return true;
}

/* A context read from Redis: NULL when absent or unusable. An unusable one
 * (cached by an older sluice) counts as a miss and is deleted, unless it
 * was replaced meanwhile; the fill that follows never writes a bad one. */
/* What lead_store() caches for a lead the source does not know: unknown
 * senders are most of a chat pipeline's lookups, and asking the source
 * again for each of their messages holds every turn back by a round of K
 * lookups. A context is always a JSON object, so this cannot be one. */
static const char UNKNOWN_MARK[] = "null";

/* The context cached in v, or NULL; *unknown when v says the source did
 * not know the lead (UNKNOWN_MARK). */
static cJSON *cached_ctx(struct lead *l, const redisReply *v, bool *unknown)
{
	struct contexts *c = l->c;
	cJSON *ctx;
	char why[300];
	char *key;

	*unknown = false;
	if (!v || v->type != REDIS_REPLY_STRING)
		return NULL;
	if (v->len == sizeof(UNKNOWN_MARK) - 1 &&
	    memcmp(v->str, UNKNOWN_MARK, v->len) == 0) {
		*unknown = true;
		return NULL;
	}
	ctx = parse_ctx(v->str, v->len);
	if (ctx && ctx_usable(v->str, v->len, ctx, why, sizeof(why)))
		return ctx;
	if (!ctx)
		snprintf(why, sizeof(why), "not a JSON object");
	cJSON_Delete(ctx);
	log_warn(
	    "lead %s: the cached context is unusable (%s); deleting it and asking the source",
	    l->id, why);
	key = key_of(ns_defs[l->ns].ctx, l->id);
	{
		const char *argv[5] = {"EVAL", LUA_RELEASE, "1", key, v->str};
		size_t lens[5] = {4, strlen(LUA_RELEASE), 1, strlen(key),
				  v->len};

		redis_forget(c, 5, argv, lens);
	}
	free(key);
	return NULL;
}

static void lead_wait(struct lead *l);

/* Reply to SET lock NX PX. */
static void lease_cb(struct lead *l, const redisReply *r)
{
	if (l->c->resetting)
		return;
	if (l->phase == PH_DONE) { /* given up meanwhile: let it go */
		l->leased = r && r->type == REDIS_REPLY_STATUS;
		lead_store(l, NULL);
		return;
	}
	if (r && r->type == REDIS_REPLY_STATUS) {
		l->leased = true;
		lead_to_source(l);
	} else if (r && r->type == REDIS_REPLY_NIL) {
		l->c->st.lease_waits++;
		backoff_init(&l->wait, WAIT_MIN_MS, WAIT_MAX_MS);
		l->wait_since = util_mono_ms();
		lead_wait(l);
	} else {
		lead_to_source(l);
	}
	pump(l->c);
}

static void lead_lease(struct lead *l)
{
	struct contexts *c = l->c;
	char *lock = key_of(ns_defs[l->ns].lock, l->id);
	char px[24];
	const char *argv[6] = {"SET", lock, c->token, "NX", "PX", px};

	snprintf(px, sizeof(px), "%d", c->cfg->lc_lease_ms);
	l->phase = PH_LEASE;
	if (!redis_send(c, lease_cb, l, 6, argv))
		lead_to_source(l);
	free(lock);
}

/* Reply to MGET lead_ctx:id lead_ctx_ver:id. */
static void read_cb(struct lead *l, const redisReply *r)
{
	if (l->c->resetting || l->phase == PH_DONE)
		return;
	if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
		redisReply *v = r->element[0], *ver = r->element[1];
		bool unknown;
		cJSON *ctx = cached_ctx(l, v, &unknown);

		if (ctx || unknown) {
			l->c->st.hits++;
			lead_finish(l, ctx ? CTX_FOUND : CTX_NOT_FOUND, ctx);
			return;
		}
		l->c->st.misses++;
		l->version_known = true;
		l->version = ver->type == REDIS_REPLY_STRING
				 ? strndup(ver->str, ver->len)
				 : NULL;
		lead_lease(l);
		pump(l->c);
		return;
	}
	l->c->st.misses++;
	lead_to_source(l);
	pump(l->c);
}

static void lead_read(struct lead *l)
{
	char *k1 = key_of(ns_defs[l->ns].ctx, l->id),
	     *k2 = key_of(ns_defs[l->ns].ver, l->id);
	const char *argv[3] = {"MGET", k1, k2};

	l->phase = PH_REDIS;
	if (!redis_send(l->c, read_cb, l, 3, argv)) {
		l->c->st.misses++;
		lead_to_source(l);
	}
	free(k1);
	free(k2);
}

static void poll_cb(struct lead *l, const redisReply *r)
{
	if (l->c->resetting)
		return;
	if (l->phase == PH_DONE) { /* given up meanwhile */
		l->leased = r && r->type == REDIS_REPLY_ARRAY &&
			    r->elements >= 1 &&
			    r->element[0]->type == REDIS_REPLY_INTEGER &&
			    r->element[0]->integer == 2;
		lead_store(l, NULL);
		return;
	}
	if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
	    r->element[0]->type == REDIS_REPLY_INTEGER) {
		long long what = r->element[0]->integer;
		cJSON *ctx = NULL;
		bool unknown = false;

		if (what == 1 && r->elements == 2)
			ctx = cached_ctx(l, r->element[1], &unknown);
		if (ctx || unknown) {
			lead_finish(l, ctx ? CTX_FOUND : CTX_NOT_FOUND, ctx);
			return;
		}
		if (what == 2) {
			l->leased = true;
			lead_to_source(l);
		} else if (util_mono_ms() - l->wait_since >=
			   l->c->cfg->lc_lease_wait_ms) {
			lead_to_source(l); /* the winner is too slow */
		} else {
			lead_wait(l);
			return;
		}
	} else {
		lead_to_source(l);
	}
	pump(l->c);
}

/* Loop timer: a waiter looks again. */
static void handle_wait(evutil_socket_t fd, short what, void *arg)
{
	struct lead *l = arg;
	struct contexts *c = l->c;
	char *k1 = key_of(ns_defs[l->ns].ctx, l->id),
	     *k2 = key_of(ns_defs[l->ns].lock, l->id);
	char px[24];
	const char *argv[7] = {"EVAL", LUA_POLL, "2", k1, k2, c->token, px};

	(void)fd;
	(void)what;
	snprintf(px, sizeof(px), "%d", c->cfg->lc_lease_ms);
	if (!redis_send(c, poll_cb, l, 7, argv)) {
		lead_to_source(l);
		pump(c);
	}
	free(k1);
	free(k2);
}

static void lead_wait(struct lead *l)
{
	struct timeval tv = util_ms_tv(backoff_next(&l->wait));

	l->phase = PH_WAIT;
	if (!l->timer)
		l->timer = evtimer_new(l->c->base, handle_wait, l);
	evtimer_add(l->timer, &tv);
}

/* After the source answered: cache the context, or UNKNOWN_MARK for a
 * lead it does not know (unless an invalidation came in between), let the
 * lease go. Nobody waits for these replies. */
static void lead_store(struct lead *l, const char *json)
{
	struct contexts *c = l->c;
	char *k1 = key_of(ns_defs[l->ns].ctx, l->id),
	     *k2 = key_of(ns_defs[l->ns].ver, l->id),
	     *k3 = key_of(ns_defs[l->ns].lock, l->id);
	char ttl[24];
	int ttl_s = json == UNKNOWN_MARK ? c->cfg->lc_not_found_ttl_s
					 : c->cfg->lc_cache_ttl_s;

	if (ttl_s <= 0)
		json = NULL; /* unknown leads are not cached */
	snprintf(ttl, sizeof(ttl), "%lld", (long long)ttl_s * 1000LL);
	if (json && l->version_known) {
		const char *argv[10] = {"EVAL",
					LUA_FILL,
					"3",
					k1,
					k2,
					k3,
					l->version ? l->version : "",
					json,
					ttl,
					c->token};

		redis_forget(c, 10, argv, NULL);
	} else if (l->leased) {
		const char *argv[5] = {"EVAL", LUA_RELEASE, "1", k3, c->token};

		redis_forget(c, 5, argv, NULL);
	}
	free(k1);
	free(k2);
	free(k3);
}

/* ------------------------------------------------------------ leads */

static void lead_finish(struct lead *l, enum ctx_state st, cJSON *ctx)
{
	struct contexts *c = l->c;

	if (l->phase == PH_DONE) {
		cJSON_Delete(ctx);
		return;
	}
	l->phase = PH_DONE;
	l->state = st;
	l->ctx = ctx;
	if (c->unresolved > 0 && --c->unresolved == 0)
		c->st.ms = util_mono_ms() - c->started_ms;
	if (c->on_lead && !c->resetting)
		c->on_lead(c->on_lead_arg, l->ns, l->id);
}

void contexts_set_listener(struct contexts *c, contexts_lead_fn fn, void *arg)
{
	c->on_lead = fn;
	c->on_lead_arg = arg;
}

static void lead_to_source(struct lead *l)
{
	struct contexts *c = l->c;

	l->phase = PH_QUEUED;
	l->next = NULL;
	if (c->q_tail)
		c->q_tail->next = l;
	else
		c->q_head = l;
	c->q_tail = l;
}

/* ------------------------------------------------------------ source */

/* Loop timer: a failed lookup's next attempt. */
static void handle_retry(evutil_socket_t fd, short what, void *arg)
{
	struct lead *l = arg;

	(void)fd;
	(void)what;
	lead_to_source(l);
	pump(l->c);
}

/* Retries wait 100 ms times the attempts made, so a source that refuses
 * connections is not hammered and a short outage is ridden out. */
static void lead_retry_later(struct lead *l)
{
	struct timeval tv = util_ms_tv(100 * l->attempts);

	l->phase = PH_QUEUED;
	if (!l->retry)
		l->retry = evtimer_new(l->c->base, handle_retry, l);
	evtimer_add(l->retry, &tv);
}

/* The slot's lookup is over for its lead. A draining slot keeps its timer
 * as the bound on the wait for the cancelled query's end: the query's own
 * statement_timeout (armed after the lookup's timer) ends it by then. */
static void slot_release(struct slot *s)
{
	if (s->timeout && s->draining) {
		struct timeval tv = util_ms_tv(s->c->cfg->lc_timeout_ms + 1000);

		evtimer_add(s->timeout, &tv);
	} else if (s->timeout) {
		evtimer_del(s->timeout);
	}
	s->lead = NULL;
	s->call = NULL;
	s->c->inflight--;
}

/* A lookup ended: ok=false is a failure (retried while attempts remain). */
static void lookup_done(struct slot *s, bool ok, bool found, const char *json,
			size_t len, const char *why)
{
	struct lead *l = s->lead;
	struct contexts *c = s->c;
	cJSON *ctx = NULL;
	char bad[300];

	if (ok && found) {
		ctx = parse_ctx(json, len);
		if (!ctx) { /* like any other failed lookup: retried */
			ok = false;
			why = "the context is not a JSON object";
		} else if (!ctx_usable(json, len, ctx, bad, sizeof(bad))) {
			cJSON_Delete(ctx);
			slot_release(s);
			c->st.invalid++;
			log_warn(
			    "lead %s: the source's context is unusable (%s); its messages fail as context_invalid, nothing is cached",
			    l->id, bad);
			lead_store(l, NULL); /* lets the lease go */
			lead_finish(l, CTX_INVALID, NULL);
			pump(c);
			return;
		}
	}
	slot_release(s);
	if (!ok) {
		c->st.failures++;
		if (l->attempts <= c->cfg->lc_retries) {
			log_debug("lead %s: lookup failed (%s); retrying",
				  l->id, why);
			lead_retry_later(l);
		} else {
			log_warn(
			    "lead %s: context unavailable after %d lookups: %s",
			    l->id, l->attempts, why);
			lead_store(l, NULL);
			lead_finish(l, CTX_UNAVAILABLE, NULL);
		}
	} else if (!found) {
		lead_store(l, UNKNOWN_MARK);
		lead_finish(l, CTX_NOT_FOUND, NULL);
	} else {
		char *text = strndup(json, len);

		lead_store(l, text);
		free(text);
		lead_finish(l, CTX_FOUND, ctx);
	}
	pump(c);
}

/* The HTTP client, on the loop: the CRM answered (or the call failed). */
static void http_done_cb(void *arg, const struct httpc_resp *r)
{
	struct slot *s = arg;
	char why[300];

	s->call = NULL; /* the client frees it after this callback */
	if (!s->lead)
		return;
	if (r->status == 200) {
		size_t i = 0;

		if (r->len == 0) {
			lookup_done(s, false, false, NULL, 0, "empty body");
			return;
		}
		while (i < r->len && strchr(" \t\r\n", r->body[i]))
			i++;
		if (r->len - i >= 4 && memcmp(r->body + i, "null", 4) == 0)
			lookup_done(s, true, false, NULL, 0, NULL);
		else
			lookup_done(s, true, true, r->body, r->len, NULL);
	} else if (r->status == 404) {
		lookup_done(s, true, false, NULL, 0, NULL);
	} else {
		if (r->status)
			snprintf(why, sizeof(why), "HTTP %d", r->status);
		else
			snprintf(why, sizeof(why), "%s", r->error);
		lookup_done(s, false, false, NULL, 0, why);
	}
}

static void url_encode(struct buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || strchr("-._~", ch)) {
			buf_append(b, s, 1);
		} else {
			char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};

			buf_append(b, e, 3);
		}
	}
}

static bool http_start(struct slot *s)
{
	struct contexts *c = s->c;
	enum ctx_ns ns = s->lead->ns;
	const char *tmpl = evhttp_uri_get_path(c->uri[ns]);
	const char *query = evhttp_uri_get_query(c->uri[ns]);
	const char *ph = ns_defs[ns].placeholder;
	const char *hit;
	static const struct httpc_header accept = {"Accept",
						   "application/json"};
	char err[256];
	struct buf url;

	buf_init(&url);
	buf_puts(&url, c->url_origin[ns]);
	if (!tmpl || !*tmpl)
		tmpl = "/";
	while ((hit = strstr(tmpl, ph)) != NULL) {
		buf_append(&url, tmpl, (size_t)(hit - tmpl));
		url_encode(&url, s->lead->id);
		tmpl = hit + strlen(ph);
	}
	buf_puts(&url, tmpl);
	if (query) {
		buf_puts(&url, "?");
		buf_puts(&url, query);
	}
	/* The call's deadline is the lookup's: the client cancels it. */
	s->call = httpc_request(c->httpc, "GET", url.data, &accept, 1, NULL, 0,
				c->cfg->lc_timeout_ms, http_done_cb, s, err,
				sizeof(err));
	if (!s->call)
		log_warn("lead %s: %s", s->lead->id, err);
	buf_free(&url);
	return s->call != NULL;
}

static void pg_drop(struct slot *s)
{
	if (s->pg_ev) {
		event_free(s->pg_ev);
		s->pg_ev = NULL;
	}
	if (s->pg)
		PQfinish(s->pg);
	s->pg = NULL;
	s->pg_ready = false;
	s->pg_setup = false;
}

static atomic_int cancels_running;

/* Its own thread: PQcancel connects to the server and waits for it to
 * close, which must not happen on the event loop. libpq 17's
 * PQcancelStart/PQcancelPoll would do it on the loop; Debian 12 has 15. */
static void *cancel_main(void *arg)
{
	PGcancel *cn = arg;
	char err[256];

	if (!PQcancel(cn, err, sizeof(err)))
		log_warn("lead contexts: cancelling a lookup: %.*s",
			 (int)strcspn(err, "\n"), err);
	PQfreeCancel(cn);
	atomic_fetch_sub(&cancels_running, 1);
	return NULL;
}

/* Asks the server to stop the query running on s->pg, without waiting. */
static void pg_cancel_send(struct slot *s)
{
	PGcancel *cn;
	pthread_attr_t attr;
	pthread_t t;
	int err;

	if (atomic_fetch_add(&cancels_running, 1) >= CANCELS_MAX) {
		atomic_fetch_sub(&cancels_running, 1);
		log_warn(
		    "lead contexts: %d cancel requests in flight; this lookup ends by statement_timeout",
		    CANCELS_MAX);
		return;
	}
	cn = PQgetCancel(s->pg);
	if (!cn) {
		atomic_fetch_sub(&cancels_running, 1);
		return;
	}
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	err = pthread_create(&t, &attr, cancel_main, cn);
	pthread_attr_destroy(&attr);
	if (err != 0) {
		log_warn(
		    "lead contexts: cannot start a cancel request: %s; this lookup ends by statement_timeout",
		    strerror(err));
		PQfreeCancel(cn);
		atomic_fetch_sub(&cancels_running, 1);
	}
}

/* The slot's lookup ends before its query did (its timeout, the budget,
 * a reset). Closing the connection would not stop the server, which runs
 * the query to its end: a backend per lookup given up, until PostgreSQL
 * refuses connections. So a running query is cancelled and the slot
 * drains: it waits for the query's end before its next connection. */
static void pg_abandon(struct slot *s)
{
	if (!s->pg || s->draining)
		return;
	if (PQstatus(s->pg) != CONNECTION_OK) {
		pg_drop(s); /* still connecting: nothing runs yet */
		return;
	}
	if (s->pg_ready)
		return; /* idle */
	s->c->st.cancels++;
	s->draining = true;
	pg_cancel_send(s);
}

/* The cancelled query ended (or the bound passed). The connection is not
 * reused: a cancel request still on its way would hit the next lookup. */
static void pg_drain_end(struct slot *s)
{
	s->draining = false;
	if (s->timeout)
		evtimer_del(s->timeout);
	pg_drop(s);
	pump(s->c);
}

static void pg_watch(struct slot *s, short what);

static void pg_fail(struct slot *s, const char *what)
{
	char why[256];
	const char *msg = s->pg ? PQerrorMessage(s->pg) : "";

	snprintf(why, sizeof(why), "%s: %.*s", what, (int)strcspn(msg, "\n"),
		 msg);
	if (s->draining) {
		pg_drain_end(s);
		return;
	}
	pg_drop(s);
	if (s->lead)
		lookup_done(s, false, false, NULL, 0, why);
}

/* Sends the lookup of s->lead, or SQL_SETUP on a new connection. */
static bool pg_send(struct slot *s, bool setup)
{
	char ms[24];
	const char *params[1];
	const char *sql;

	if (setup) {
		snprintf(ms, sizeof(ms), "%d", s->c->cfg->lc_timeout_ms);
		params[0] = ms;
		sql = SQL_SETUP;
	} else {
		params[0] = s->lead->id;
		sql = ns_defs[s->lead->ns].sql;
	}
	if (!PQsendQueryParams(s->pg, sql, 1, NULL, params, NULL, NULL, 0))
		return false;
	s->pg_ready = false;
	s->pg_setup = setup;
	pg_watch(s, PQflush(s->pg) == 1 ? EV_WRITE | EV_READ : EV_READ);
	return true;
}

/* The query's results are in: the lookup's answer, the end of SQL_SETUP or
 * of a cancelled query. */
static void pg_result(struct slot *s)
{
	bool ok = false, found = false;
	char *text = NULL;
	char why[256] = "no result";
	PGresult *res;

	while ((res = PQgetResult(s->pg)) != NULL) {
		if (PQresultStatus(res) == PGRES_TUPLES_OK &&
		    PQntuples(res) == 1) {
			ok = true;
			found = !PQgetisnull(res, 0, 0);
			if (found && !text)
				text = strndup(PQgetvalue(res, 0, 0),
					       (size_t)PQgetlength(res, 0, 0));
		} else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			const char *m = PQresultErrorMessage(res);

			snprintf(why, sizeof(why), "%.*s",
				 (int)strcspn(m, "\n"), m);
		}
		PQclear(res);
	}
	if (s->draining) {
		free(text);
		pg_drain_end(s);
		return;
	}
	s->pg_ready = PQstatus(s->pg) == CONNECTION_OK;
	if (s->pg_setup) {
		s->pg_setup = false;
		free(text);
		if (!ok || !s->pg_ready) {
			pg_fail(s, "statement_timeout");
		} else if (s->lead && !pg_send(s, false)) {
			pg_fail(s, "send");
		}
		return;
	}
	if (!s->pg_ready)
		pg_drop(s);
	if (s->lead)
		lookup_done(s, ok, found, text, text ? strlen(text) : 0, why);
	free(text);
}

/* libpq's socket, on the loop: connecting, sending or reading a result. */
static void handle_pg(evutil_socket_t fd, short what, void *arg)
{
	struct slot *s = arg;

	(void)fd;
	if (!s->pg_ready && PQstatus(s->pg) != CONNECTION_OK) {
		switch (PQconnectPoll(s->pg)) {
		case PGRES_POLLING_READING: pg_watch(s, EV_READ); return;
		case PGRES_POLLING_WRITING: pg_watch(s, EV_WRITE); return;
		case PGRES_POLLING_OK:
			PQsetnonblocking(s->pg, 1);
			if (!pg_send(s, true))
				pg_fail(s, "send");
			return;
		default: pg_fail(s, "connect"); return;
		}
	}
	if (what & EV_WRITE) {
		int r = PQflush(s->pg);

		if (r < 0) {
			pg_fail(s, "send");
			return;
		}
		if (r == 1) {
			pg_watch(s, EV_WRITE | EV_READ);
			return;
		}
		pg_watch(s, EV_READ);
	}
	if (!(what & EV_READ))
		return;
	if (!PQconsumeInput(s->pg)) {
		pg_fail(s, "read");
		return;
	}
	if (PQisBusy(s->pg)) {
		pg_watch(s, EV_READ);
		return;
	}
	pg_result(s);
}

static void pg_watch(struct slot *s, short what)
{
	if (s->pg_ev)
		event_free(s->pg_ev);
	s->pg_ev = event_new(s->c->base, PQsocket(s->pg), what, handle_pg, s);
	event_add(s->pg_ev, NULL);
}

static bool pg_start(struct slot *s)
{
	const char *dsn = s->c->cfg->lc_postgres_dsn[0]
			      ? s->c->cfg->lc_postgres_dsn
			      : s->c->cfg->postgres_dsn;

	if (s->pg && s->pg_ready)
		return pg_send(s, false);
	if (s->pg)
		pg_drop(s);
	s->pg = PQconnectStart(dsn);
	if (!s->pg || PQstatus(s->pg) == CONNECTION_BAD) {
		pg_drop(s);
		return false;
	}
	pg_watch(s, EV_WRITE);
	return true;
}

/* Ends the slot's lookup before its answer: the HTTP request is dropped,
 * the PostgreSQL query cancelled. The caller releases the slot. */
static void slot_abandon(struct slot *s)
{
	if (s->call) {
		struct httpc_call *call = s->call;

		s->call = NULL;
		httpc_cancel(call); /* no callback after this */
	}
	if (!s->c->http)
		pg_abandon(s);
}

/* Loop timer: a lookup over lead_context.timeout_ms is given up; or a
 * draining slot's cancelled query outlived its bound. */
static void handle_lookup_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct slot *s = arg;

	(void)fd;
	(void)what;
	if (!s->lead) {
		if (s->draining) {
			log_warn(
			    "lead contexts: a cancelled lookup did not end in time; closing its connection");
			pg_drain_end(s);
		}
		return;
	}
	slot_abandon(s);
	lookup_done(s, false, false, NULL, 0, "timed out");
}

/* Starts queued lookups while fewer than K are in flight: a sliding
 * window, so a slot is reused the moment its lookup ends. */
static void pump(struct contexts *c)
{
	while (c->q_head && c->inflight < c->k) {
		struct lead *l = c->q_head;
		struct slot *s = NULL;
		struct timeval tv = util_ms_tv(c->cfg->lc_timeout_ms);
		bool started;

		for (int i = 0; i < c->k && !s; i++)
			if (!c->slots[i].lead && !c->slots[i].draining)
				s = &c->slots[i];
		if (!s)
			return;
		c->q_head = l->next;
		if (!c->q_head)
			c->q_tail = NULL;
		l->next = NULL;
		l->phase = PH_FETCHING;
		l->attempts++;
		s->lead = l;
		c->inflight++;
		if (c->inflight > c->st.peak_inflight)
			c->st.peak_inflight = c->inflight;
		c->st.lookups++;
		if (!s->timeout)
			s->timeout =
			    evtimer_new(c->base, handle_lookup_timeout, s);
		/* An HTTP lookup's deadline is its call's (httpc). */
		if (!c->http)
			evtimer_add(s->timeout, &tv);
		started = c->http ? http_start(s) : pg_start(s);
		if (!started) {
			/* Counts as a failed attempt; lookup_done pumps. */
			lookup_done(s, false, false, NULL, 0,
				    "cannot start the lookup");
			return;
		}
	}
}

/* ------------------------------------------------------------ the API */

static void handle_budget(evutil_socket_t fd, short what, void *arg);

struct contexts *contexts_new(struct event_base *base,
			      const struct worker_config *cfg,
			      struct httpc *httpc, char *errstr,
			      size_t errstr_size)
{
	struct contexts *c = xcalloc(1, sizeof(*c));

	c->base = base;
	c->cfg = cfg;
	c->k = cfg->lc_concurrency;
	util_random_id(c->token, sizeof(c->token), "lease_");
	c->redis = rconn_new(base, cfg->redis_url, cfg->redis_password,
			     cfg->redis_timeout_ms, "lead contexts", errstr,
			     errstr_size);
	if (!c->redis) {
		free(c);
		return NULL;
	}
	c->http = cfg->lc_source == LC_SOURCE_HTTP;
	c->httpc = httpc;
	for (int ns = 0; c->http && ns < CTX_NS_COUNT; ns++) {
		const char *url =
		    ns == CTX_NS_LEAD ? cfg->lc_url : cfg->lc_phone_url;

		if (!url[0])
			continue; /* no source for this name: unknown leads */
		/* Non-conformant: "{lead_id}" is not a valid path character. */
		c->uri[ns] =
		    evhttp_uri_parse_with_flags(url, EVHTTP_URI_NONCONFORMANT);
		if (!c->uri[ns] || !evhttp_uri_get_host(c->uri[ns]) ||
		    !evhttp_uri_get_scheme(c->uri[ns]) ||
		    (strcmp(evhttp_uri_get_scheme(c->uri[ns]), "http") != 0 &&
		     strcmp(evhttp_uri_get_scheme(c->uri[ns]), "https") != 0)) {
			snprintf(errstr, errstr_size,
				 "lead context URL: expected "
				 "http(s)://host[:port]/path/%s, got \"%s\"",
				 ns_defs[ns].placeholder, url);
			contexts_destroy(c);
			return NULL;
		}
		{
			struct buf o;

			buf_init(&o);
			buf_printf(&o, "%s://%s",
				   evhttp_uri_get_scheme(c->uri[ns]),
				   evhttp_uri_get_host(c->uri[ns]));
			if (evhttp_uri_get_port(c->uri[ns]) > 0)
				buf_printf(&o, ":%d",
					   evhttp_uri_get_port(c->uri[ns]));
			c->url_origin[ns] = o.data;
		}
	}
	c->slots = xcalloc((size_t)c->k, sizeof(*c->slots));
	for (int i = 0; i < c->k; i++)
		c->slots[i].c = c;
	c->budget = evtimer_new(base, handle_budget, c);
	if (!c->budget)
		abort();
	return c;
}

void contexts_destroy(struct contexts *c)
{
	if (!c)
		return;
	contexts_reset(c);
	for (int i = 0; c->slots && i < c->k; i++) {
		struct slot *s = &c->slots[i];

		if (s->call)
			httpc_cancel(s->call);
		pg_drop(s);
		if (s->timeout)
			event_free(s->timeout);
	}
	free(c->slots);
	if (c->budget)
		event_free(c->budget);
	/* No reply callback runs from here on: the tickets go with it. */
	rconn_destroy(c->redis);
	while (c->tickets) {
		struct ticket *t = c->tickets;

		ticket_unlink(t);
		free(t);
	}
	for (int ns = 0; ns < CTX_NS_COUNT; ns++) {
		if (c->uri[ns])
			evhttp_uri_free(c->uri[ns]);
		free(c->url_origin[ns]);
	}
	free(c->leads);
	free(c);
}

/* Cancels every lookup in flight; their leads get no answer from them. */
static void slots_abandon(struct contexts *c)
{
	for (int i = 0; c->slots && i < c->k; i++) {
		struct slot *s = &c->slots[i];

		if (!s->lead)
			continue;
		slot_abandon(s);
		slot_release(s);
	}
}

static void lead_free(struct lead *l)
{
	if (l->timer)
		event_free(l->timer);
	if (l->retry)
		event_free(l->retry);
	cJSON_Delete(l->ctx);
	free(l->version);
	free(l->id);
	free(l);
}

void contexts_reset(struct contexts *c)
{
	c->resetting = true;
	if (c->budget)
		evtimer_del(c->budget);
	/* Lookups still running belong to leads about to go (only when a
	 * batch was given up while stopping). */
	slots_abandon(c);
	/* Replies still due for these leads (given up while Redis was slow)
	 * find no lead; the connection stays. */
	for (struct ticket *t = c->tickets; t; t = t->next)
		t->l = NULL;
	for (size_t i = 0; i < c->n_leads; i++)
		lead_free(c->leads[i]);
	c->n_leads = c->sorted = c->unresolved = 0;
	c->q_head = c->q_tail = NULL;
	memset(&c->st, 0, sizeof(c->st));
	c->resetting = false;
}

static int cmp_lead(const void *a, const void *b)
{
	const struct lead *x = *(struct lead *const *)a;
	const struct lead *y = *(struct lead *const *)b;

	if (x->ns != y->ns)
		return (int)x->ns - (int)y->ns;
	return strcmp(x->id, y->id);
}

void contexts_want(struct contexts *c, enum ctx_ns ns, const char *lead_id)
{
	struct lead *l;

	if (c->n_leads == c->cap_leads) {
		c->cap_leads = c->cap_leads ? c->cap_leads * 2 : 64;
		c->leads = xrealloc(c->leads, c->cap_leads * sizeof(*c->leads));
	}
	l = xcalloc(1, sizeof(*l));
	l->c = c;
	l->ns = ns;
	l->id = xstrdup(lead_id);
	c->leads[c->n_leads++] = l;
}

/* Sorts the batch's leads and drops the repeats: one lookup per lead. */
static void leads_unique(struct contexts *c)
{
	size_t out = 0;

	if (c->sorted == c->n_leads)
		return;
	qsort(c->leads, c->n_leads, sizeof(*c->leads), cmp_lead);
	for (size_t i = 0; i < c->n_leads; i++) {
		if (out > 0 &&
		    strcmp(c->leads[out - 1]->id, c->leads[i]->id) == 0) {
			/* keep the one already resolved, if either is */
			if (c->leads[i]->phase == PH_DONE &&
			    c->leads[out - 1]->phase != PH_DONE) {
				struct lead *t = c->leads[out - 1];

				c->leads[out - 1] = c->leads[i];
				c->leads[i] = t;
			}
			lead_free(c->leads[i]);
			continue;
		}
		c->leads[out++] = c->leads[i];
	}
	c->n_leads = c->sorted = out;
}

void contexts_fetch(struct contexts *c)
{
	leads_unique(c);
	c->st.leads = c->n_leads;
	c->started_ms = util_mono_ms();
	c->unresolved = 0;
	for (size_t i = 0; i < c->n_leads; i++) {
		struct lead *l = c->leads[i];

		/* A batch attempt that failed (database down) asks again for
		 * what was unavailable: the outage may have been the cause. */
		if (l->phase == PH_DONE && l->state == CTX_UNAVAILABLE) {
			l->phase = PH_NEW;
			l->state = CTX_PENDING;
			l->attempts = 0;
		}
		if (l->phase != PH_DONE)
			c->unresolved++;
	}
	if (c->unresolved == 0)
		return;
	/* Each attempt at the batch gets the budget: one retried after a
	 * database failure asks again for what was unavailable. */
	{
		struct timeval tv = util_ms_tv(c->cfg->lc_batch_budget_ms);

		evtimer_add(c->budget, &tv);
	}
	/* One pipelined round trip reads every lead's context and version:
	 * hiredis writes all the queued commands in one go. */
	for (size_t i = 0; i < c->n_leads; i++) {
		struct lead *l = c->leads[i];

		if (l->phase != PH_NEW)
			continue;
		if (c->http && !c->uri[l->ns])
			lead_finish(l, CTX_NOT_FOUND, NULL); /* no source */
		else
			lead_read(l);
	}
	pump(c);
}

/* Every lead still unresolved becomes CTX_UNAVAILABLE; its lease is let
 * go, its lookup cancelled. A Redis reply still to come for one of them
 * finds it done and changes nothing. */
static void give_up_rest(struct contexts *c, bool budget)
{
	size_t left = 0;

	for (size_t i = 0; i < c->n_leads; i++) {
		struct lead *l = c->leads[i];

		if (l->phase == PH_DONE)
			continue;
		left++;
		if (budget)
			c->st.over_budget++;
		else
			log_warn(
			    "lead %s: no context after the batch's deadline",
			    l->id);
		if (l->timer)
			evtimer_del(l->timer);
		if (l->retry)
			evtimer_del(l->retry);
		lead_store(l, NULL);
		lead_finish(l, CTX_UNAVAILABLE, NULL);
	}
	if (budget && left > 0)
		log_warn(
		    "lead contexts: the batch's lookup budget (lead_context.batch_budget_ms = %d) ran out with %zu of %zu leads unresolved; their messages fail as context_unavailable",
		    c->cfg->lc_batch_budget_ms, left, c->n_leads);
	/* Lookups still running answer into nothing: cancel them. */
	slots_abandon(c);
	c->q_head = c->q_tail = NULL;
}

/* Loop timer: lead_context.batch_budget_ms since contexts_fetch(). */
static void handle_budget(evutil_socket_t fd, short what, void *arg)
{
	struct contexts *c = arg;

	(void)fd;
	(void)what;
	if (c->unresolved > 0)
		give_up_rest(c, true);
}

void contexts_give_up(struct contexts *c)
{
	give_up_rest(c, false);
}

bool contexts_done(const struct contexts *c)
{
	return c->unresolved == 0;
}

enum ctx_state contexts_get(const struct contexts *c, enum ctx_ns ns,
			    const char *lead_id, const cJSON **ctx)
{
	struct lead key = {.ns = ns, .id = (char *)lead_id};
	struct lead *kp = &key;
	struct lead **hit;

	*ctx = NULL;
	if (c->sorted != c->n_leads)
		return CTX_PENDING;
	hit = bsearch(&kp, c->leads, c->n_leads, sizeof(*c->leads), cmp_lead);
	if (!hit || (*hit)->phase != PH_DONE)
		return CTX_PENDING;
	*ctx = (*hit)->ctx;
	return (*hit)->state;
}

const struct contexts_stats *contexts_stats(const struct contexts *c)
{
	return &c->st;
}

int contexts_inflight(const struct contexts *c)
{
	return c->inflight;
}
