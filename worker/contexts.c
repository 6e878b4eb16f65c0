/* Lead contexts, the shared service: a batch's distinct leads read through
 * Redis (cache-aside with a lease against stampedes and a version against
 * stale fills), misses fetched from the context source with at most K
 * lookups in flight, as a sliding window, all on the worker's event_base.
 *
 * A lead moves through: REDIS (MGET of its context and version, pipelined
 * with every other lead's) → LEASE (SET lock NX PX) → either QUEUED for the
 * source (lease won, Redis down, or waited too long) or WAIT (another
 * worker fills it; poll with back-off) → FOUND / NOT_FOUND / UNAVAILABLE.
 * Every callback below runs on the worker thread, inside the event_base. */
#include "contexts.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "cache.h"

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
#define REDIS_RETRY_MAX_MS 5000

/* Fill only when no invalidation bumped the version since it was read, and
 * release the lease if it is still ours. */
static const char LUA_FILL[] =
    "local v = redis.call('GET', KEYS[2]) or ''\n"
    "if v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) "
    "end\n"
    "if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', "
    "KEYS[3]) end\n"
    "return 1";
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
	int wait_ms;	     /* next back-off while waiting for a lease */
	int64_t wait_since;  /* when waiting began (monotonic ms) */
	struct event *timer; /* lease wait */
	struct event *retry; /* next attempt at the source */
	struct lead *next;   /* source queue */
};

struct slot {
	struct contexts *c;
	struct lead *lead; /* NULL when free */
	struct event *timeout;
	/* http, one connection per source URL */
	struct evhttp_connection *hc[CTX_NS_COUNT];
	struct evhttp_request *req;
	/* postgres */
	PGconn *pg;
	struct event *pg_ev;
	bool pg_ready; /* connected, no query running */
};

struct contexts {
	struct event_base *base;
	const struct worker_config *cfg;
	struct redis_addr raddr;
	redisAsyncContext *ac;
	int64_t redis_retry_at;
	int redis_backoff_ms;
	int redis_outstanding; /* replies the batch waits for */
	int64_t redis_last_ms; /* last send or reply */
	struct event *redis_watch;
	char token[48]; /* this worker's lease value */
	/* the source */
	bool http;
	struct evhttp_uri *uri[CTX_NS_COUNT]; /* NULL: no such source */
	char *url_host[CTX_NS_COUNT];
	int url_port[CTX_NS_COUNT];
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
	struct contexts_stats st;
};

static void pump(struct contexts *c);
static void lead_finish(struct lead *l, enum ctx_state st, cJSON *ctx);
static void lead_to_source(struct lead *l);

static char *key_of(const char *prefix, const char *id)
{
	size_t n = strlen(prefix) + strlen(id) + 1;
	char *k = malloc(n);

	if (!k)
		abort();
	snprintf(k, n, "%s%s", prefix, id);
	return k;
}

/* ------------------------------------------------------------ Redis */

static void redis_drop(struct contexts *c, const char *why)
{
	redisAsyncContext *ac = c->ac;

	if (!ac)
		return;
	log_warn("redis %s:%d (lead contexts): %s; going to the source, "
		 "reconnecting in %d ms",
		 c->raddr.host, c->raddr.port, why, c->redis_backoff_ms);
	c->ac = NULL;
	c->redis_retry_at = util_mono_ms() + c->redis_backoff_ms;
	c->redis_backoff_ms = c->redis_backoff_ms * 2 > REDIS_RETRY_MAX_MS
				  ? REDIS_RETRY_MAX_MS
				  : c->redis_backoff_ms * 2;
	c->redis_outstanding = 0;
	/* Calls every pending callback with a NULL reply. */
	redisAsyncFree(ac);
}

/* hiredis, on the loop: the connection went away by itself. */
static void redis_disconnect_cb(const redisAsyncContext *ac, int status)
{
	struct contexts *c = ac->data;

	if (c && c->ac == ac) {
		c->ac = NULL;
		c->redis_outstanding = 0;
		c->redis_retry_at = util_mono_ms() + c->redis_backoff_ms;
		if (status != REDIS_OK)
			log_warn("redis (lead contexts): disconnected: %s",
				 ac->errstr);
	}
}

static void redis_connect_cb(const redisAsyncContext *ac, int status)
{
	struct contexts *c = ac->data;

	if (status != REDIS_OK) {
		if (c && c->ac == ac) {
			log_warn("redis (lead contexts): connect: %s",
				 ac->errstr);
			c->ac = NULL;
			c->redis_outstanding = 0;
			c->redis_retry_at =
			    util_mono_ms() + c->redis_backoff_ms;
		}
		return;
	}
	if (c)
		c->redis_backoff_ms = 100;
}

/* Loop timer: a Redis that stopped answering is dropped, so its leads go
 * to the source instead of waiting on it. */
static void handle_redis_watch(evutil_socket_t fd, short what, void *arg)
{
	struct contexts *c = arg;

	(void)fd;
	(void)what;
	if (c->ac && c->redis_outstanding > 0 &&
	    util_mono_ms() - c->redis_last_ms > c->cfg->redis_timeout_ms)
		redis_drop(c, "no answer in time");
}

static bool redis_ready(struct contexts *c)
{
	char err[256];

	if (c->ac)
		return true;
	if (util_mono_ms() < c->redis_retry_at)
		return false;
	c->ac = redis_async_open(c->base, &c->raddr, c, redis_connect_cb,
				 redis_disconnect_cb, err, sizeof(err));
	if (!c->ac) {
		log_warn("redis (lead contexts): %s", err);
		c->redis_retry_at = util_mono_ms() + c->redis_backoff_ms;
		return false;
	}
	return true;
}

/* Sends a command whose reply the batch waits for; false when Redis is
 * not available (the callback is then not called). */
static bool redis_send(struct contexts *c, redisCallbackFn *fn, void *priv,
		       int argc, const char **argv, const size_t *lens)
{
	/* Redis down (or backing off) counts as an error for each lead
	 * that had to go without it. */
	if (!redis_ready(c) || redisAsyncCommandArgv(c->ac, fn, priv, argc,
						     argv, lens) != REDIS_OK) {
		c->st.redis_errors++;
		return false;
	}
	if (fn) {
		c->redis_outstanding++;
		c->redis_last_ms = util_mono_ms();
	}
	return true;
}

static void redis_got(struct contexts *c, const redisReply *r)
{
	if (c->redis_outstanding > 0)
		c->redis_outstanding--;
	c->redis_last_ms = util_mono_ms();
	if (!r) {
		c->st.redis_errors++;
	} else if (r->type == REDIS_REPLY_ERROR) {
		c->st.redis_errors++;
		log_warn("redis (lead contexts): %s", r->str);
	}
}

static cJSON *parse_ctx(const char *s, size_t len)
{
	cJSON *doc = cJSON_ParseWithLength(s, len);

	if (doc && cJSON_IsObject(doc))
		return doc;
	cJSON_Delete(doc);
	return NULL;
}

static void lead_wait(struct lead *l);

/* Reply to SET lock NX PX. */
static void lease_cb(redisAsyncContext *ac, void *reply, void *priv)
{
	struct lead *l = priv;
	redisReply *r = reply;

	(void)ac;
	redis_got(l->c, r);
	if (l->c->resetting)
		return;
	if (r && r->type == REDIS_REPLY_STATUS) {
		l->leased = true;
		lead_to_source(l);
	} else if (r && r->type == REDIS_REPLY_NIL) {
		l->c->st.lease_waits++;
		l->wait_ms = WAIT_MIN_MS;
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
	if (!redis_send(c, lease_cb, l, 6, argv, NULL))
		lead_to_source(l);
	free(lock);
}

/* Reply to MGET lead_ctx:id lead_ctx_ver:id. */
static void read_cb(redisAsyncContext *ac, void *reply, void *priv)
{
	struct lead *l = priv;
	redisReply *r = reply;

	(void)ac;
	redis_got(l->c, r);
	if (l->c->resetting)
		return;
	if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
		redisReply *v = r->element[0], *ver = r->element[1];
		cJSON *ctx = v->type == REDIS_REPLY_STRING
				 ? parse_ctx(v->str, v->len)
				 : NULL;

		if (ctx) {
			l->c->st.hits++;
			lead_finish(l, CTX_FOUND, ctx);
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
	if (!redis_send(l->c, read_cb, l, 3, argv, NULL)) {
		l->c->st.misses++;
		lead_to_source(l);
	}
	free(k1);
	free(k2);
}

static void poll_cb(redisAsyncContext *ac, void *reply, void *priv)
{
	struct lead *l = priv;
	redisReply *r = reply;

	(void)ac;
	redis_got(l->c, r);
	if (l->c->resetting)
		return;
	if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
	    r->element[0]->type == REDIS_REPLY_INTEGER) {
		long long what = r->element[0]->integer;
		cJSON *ctx = NULL;

		if (what == 1 && r->elements == 2 &&
		    r->element[1]->type == REDIS_REPLY_STRING)
			ctx = parse_ctx(r->element[1]->str, r->element[1]->len);
		if (ctx) {
			lead_finish(l, CTX_FOUND, ctx);
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
	if (!redis_send(c, poll_cb, l, 7, argv, NULL)) {
		lead_to_source(l);
		pump(c);
	}
	free(k1);
	free(k2);
}

static void lead_wait(struct lead *l)
{
	struct timeval tv = {l->wait_ms / 1000, (l->wait_ms % 1000) * 1000};

	l->phase = PH_WAIT;
	if (!l->timer)
		l->timer = evtimer_new(l->c->base, handle_wait, l);
	evtimer_add(l->timer, &tv);
	l->wait_ms =
	    l->wait_ms * 2 > WAIT_MAX_MS ? WAIT_MAX_MS : l->wait_ms * 2;
}

/* After the source answered: cache the context (unless an invalidation
 * came in between), let the lease go. Nobody waits for these replies. */
static void lead_store(struct lead *l, const char *json)
{
	struct contexts *c = l->c;
	char *k1 = key_of(ns_defs[l->ns].ctx, l->id),
	     *k2 = key_of(ns_defs[l->ns].ver, l->id),
	     *k3 = key_of(ns_defs[l->ns].lock, l->id);
	char ttl[24];

	snprintf(ttl, sizeof(ttl), "%lld",
		 (long long)c->cfg->lc_cache_ttl_s * 1000LL);
	if (json && l->version_known && c->ac) {
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

		redisAsyncCommandArgv(c->ac, NULL, NULL, 10, argv, NULL);
	} else if (l->leased && c->ac) {
		const char *argv[5] = {"EVAL", LUA_RELEASE, "1", k3, c->token};

		redisAsyncCommandArgv(c->ac, NULL, NULL, 5, argv, NULL);
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
	int ms = 100 * l->attempts;
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	l->phase = PH_QUEUED;
	if (!l->retry)
		l->retry = evtimer_new(l->c->base, handle_retry, l);
	evtimer_add(l->retry, &tv);
}

static void slot_release(struct slot *s)
{
	if (s->timeout)
		evtimer_del(s->timeout);
	s->lead = NULL;
	s->req = NULL;
	s->c->inflight--;
}

/* A lookup ended: ok=false is a failure (retried while attempts remain). */
static void lookup_done(struct slot *s, bool ok, bool found, const char *json,
			size_t len, const char *why)
{
	struct lead *l = s->lead;
	struct contexts *c = s->c;
	cJSON *ctx = NULL;

	if (ok && found) {
		ctx = parse_ctx(json, len);
		if (!ctx) { /* like any other failed lookup: retried */
			ok = false;
			why = "the context is not a JSON object";
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
			log_warn("lead %s: context unavailable after %d "
				 "lookups: %s",
				 l->id, l->attempts, why);
			lead_store(l, NULL);
			lead_finish(l, CTX_UNAVAILABLE, NULL);
		}
	} else if (!found) {
		lead_store(l, NULL);
		lead_finish(l, CTX_NOT_FOUND, NULL);
	} else {
		char *text = strndup(json, len);

		lead_store(l, text);
		free(text);
		lead_finish(l, CTX_FOUND, ctx);
	}
	pump(c);
}

/* libevent's HTTP client, on the loop: the CRM answered (or failed). */
static void http_done_cb(struct evhttp_request *req, void *arg)
{
	struct slot *s = arg;
	int code = req ? evhttp_request_get_response_code(req) : 0;
	char why[64];

	if (!s->lead)
		return;
	s->req = NULL; /* freed by evhttp after this callback */
	if (code == 200) {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		size_t len = evbuffer_get_length(in);
		const char *body = (const char *)evbuffer_pullup(in, -1);
		size_t i = 0;

		if (!body || len == 0) {
			lookup_done(s, false, false, NULL, 0, "empty body");
			return;
		}
		while (i < len && strchr(" \t\r\n", body[i]))
			i++;
		if (len - i >= 4 && memcmp(body + i, "null", 4) == 0)
			lookup_done(s, true, false, NULL, 0, NULL);
		else
			lookup_done(s, true, true, body, len, NULL);
	} else if (code == 404) {
		lookup_done(s, true, false, NULL, 0, NULL);
	} else {
		snprintf(why, sizeof(why), code ? "HTTP %d" : "no answer",
			 code);
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
	struct timeval tv = {c->cfg->lc_timeout_ms / 1000,
			     (c->cfg->lc_timeout_ms % 1000) * 1000};
	struct buf path;

	if (!s->hc[ns]) {
		s->hc[ns] =
		    evhttp_connection_base_new(c->base, NULL, c->url_host[ns],
					       (ev_uint16_t)c->url_port[ns]);
		if (!s->hc[ns])
			return false;
		evhttp_connection_set_timeout_tv(s->hc[ns], &tv);
	}
	buf_init(&path);
	if (!tmpl || !*tmpl)
		tmpl = "/";
	while ((hit = strstr(tmpl, ph)) != NULL) {
		buf_append(&path, tmpl, (size_t)(hit - tmpl));
		url_encode(&path, s->lead->id);
		tmpl = hit + strlen(ph);
	}
	buf_puts(&path, tmpl);
	if (query) {
		buf_puts(&path, "?");
		buf_puts(&path, query);
	}
	s->req = evhttp_request_new(http_done_cb, s);
	evhttp_add_header(evhttp_request_get_output_headers(s->req), "Host",
			  c->url_host[ns]);
	evhttp_add_header(evhttp_request_get_output_headers(s->req), "Accept",
			  "application/json");
	if (evhttp_make_request(s->hc[ns], s->req, EVHTTP_REQ_GET, path.data) !=
	    0) {
		/* evhttp freed the request */
		s->req = NULL;
		buf_free(&path);
		return false;
	}
	buf_free(&path);
	return true;
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
}

static void pg_watch(struct slot *s, short what);

static void pg_fail(struct slot *s, const char *what)
{
	char why[256];
	const char *msg = s->pg ? PQerrorMessage(s->pg) : "";

	snprintf(why, sizeof(why), "%s: %.*s", what, (int)strcspn(msg, "\n"),
		 msg);
	pg_drop(s);
	lookup_done(s, false, false, NULL, 0, why);
}

static bool pg_send(struct slot *s)
{
	const char *params[1] = {s->lead->id};

	if (!PQsendQueryParams(s->pg, ns_defs[s->lead->ns].sql, 1, NULL, params,
			       NULL, NULL, 0))
		return false;
	s->pg_ready = false;
	pg_watch(s, PQflush(s->pg) == 1 ? EV_WRITE | EV_READ : EV_READ);
	return true;
}

/* libpq's socket, on the loop: connecting, sending or reading a result. */
static void handle_pg(evutil_socket_t fd, short what, void *arg)
{
	struct slot *s = arg;
	PGresult *res;

	(void)fd;
	if (!s->pg_ready && PQstatus(s->pg) != CONNECTION_OK) {
		switch (PQconnectPoll(s->pg)) {
		case PGRES_POLLING_READING: pg_watch(s, EV_READ); return;
		case PGRES_POLLING_WRITING: pg_watch(s, EV_WRITE); return;
		case PGRES_POLLING_OK:
			PQsetnonblocking(s->pg, 1);
			s->pg_ready = true;
			if (s->lead && !pg_send(s))
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
	{
		bool ok = false, found = false;
		char *text = NULL;
		char why[256] = "no result";

		while ((res = PQgetResult(s->pg)) != NULL) {
			if (PQresultStatus(res) == PGRES_TUPLES_OK &&
			    PQntuples(res) == 1) {
				ok = true;
				found = !PQgetisnull(res, 0, 0);
				if (found)
					text = strdup(PQgetvalue(res, 0, 0));
			} else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
				const char *m = PQresultErrorMessage(res);

				snprintf(why, sizeof(why), "%.*s",
					 (int)strcspn(m, "\n"), m);
			}
			PQclear(res);
		}
		s->pg_ready = PQstatus(s->pg) == CONNECTION_OK;
		if (!s->pg_ready)
			pg_drop(s);
		if (s->lead)
			lookup_done(s, ok, found, text, text ? strlen(text) : 0,
				    why);
		free(text);
	}
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
		return pg_send(s);
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

/* Loop timer: a lookup over lead_context.timeout_ms is abandoned. */
static void handle_lookup_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct slot *s = arg;

	(void)fd;
	(void)what;
	if (!s->lead)
		return;
	if (s->req) {
		struct evhttp_request *req = s->req;

		s->req = NULL;
		evhttp_cancel_request(req); /* no callback after this */
	}
	if (!s->c->http)
		pg_drop(s); /* the query may still run: start afresh */
	lookup_done(s, false, false, NULL, 0, "timed out");
}

/* Starts queued lookups while fewer than K are in flight: a sliding
 * window, so a slot is reused the moment its lookup ends. */
static void pump(struct contexts *c)
{
	while (c->q_head && c->inflight < c->k) {
		struct lead *l = c->q_head;
		struct slot *s = NULL;
		struct timeval tv = {c->cfg->lc_timeout_ms / 1000,
				     (c->cfg->lc_timeout_ms % 1000) * 1000};
		bool started;

		for (int i = 0; i < c->k && !s; i++)
			if (!c->slots[i].lead)
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

struct contexts *contexts_new(struct event_base *base,
			      const struct worker_config *cfg, char *errstr,
			      size_t errstr_size)
{
	struct contexts *c = calloc(1, sizeof(*c));
	struct timeval tv = {0, 50 * 1000};

	if (!c)
		abort();
	c->base = base;
	c->cfg = cfg;
	c->k = cfg->lc_concurrency;
	c->redis_backoff_ms = 100;
	util_random_id(c->token, sizeof(c->token), "lease_");
	if (!redis_addr_parse(cfg->redis_url, &c->raddr, errstr, errstr_size)) {
		free(c);
		return NULL;
	}
	c->http = cfg->lc_source == LC_SOURCE_HTTP;
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
		    strcmp(evhttp_uri_get_scheme(c->uri[ns]), "http") != 0) {
			snprintf(errstr, errstr_size,
				 "lead context URL: expected "
				 "http://host[:port]/path/%s, got \"%s\"",
				 ns_defs[ns].placeholder, url);
			contexts_destroy(c);
			return NULL;
		}
		c->url_host[ns] = strdup(evhttp_uri_get_host(c->uri[ns]));
		c->url_port[ns] = evhttp_uri_get_port(c->uri[ns]) > 0
				      ? evhttp_uri_get_port(c->uri[ns])
				      : 80;
	}
	c->slots = calloc((size_t)c->k, sizeof(*c->slots));
	if (!c->slots)
		abort();
	for (int i = 0; i < c->k; i++)
		c->slots[i].c = c;
	c->redis_watch = event_new(base, -1, EV_PERSIST, handle_redis_watch, c);
	event_add(c->redis_watch, &tv);
	return c;
}

void contexts_destroy(struct contexts *c)
{
	if (!c)
		return;
	contexts_reset(c);
	for (int i = 0; c->slots && i < c->k; i++) {
		struct slot *s = &c->slots[i];

		if (s->req)
			evhttp_cancel_request(s->req);
		for (int ns = 0; ns < CTX_NS_COUNT; ns++)
			if (s->hc[ns])
				evhttp_connection_free(s->hc[ns]);
		pg_drop(s);
		if (s->timeout)
			event_free(s->timeout);
	}
	free(c->slots);
	if (c->redis_watch)
		event_free(c->redis_watch);
	if (c->ac) {
		redisAsyncContext *ac = c->ac;

		c->ac = NULL;
		redisAsyncFree(ac);
	}
	for (int ns = 0; ns < CTX_NS_COUNT; ns++) {
		if (c->uri[ns])
			evhttp_uri_free(c->uri[ns]);
		free(c->url_host[ns]);
	}
	free(c->leads);
	redis_addr_free(&c->raddr);
	free(c);
}

/* Cancels every lookup in flight; their leads get no answer from them. */
static void slots_abandon(struct contexts *c)
{
	for (int i = 0; c->slots && i < c->k; i++) {
		struct slot *s = &c->slots[i];

		if (!s->lead)
			continue;
		if (s->req) {
			struct evhttp_request *req = s->req;

			s->req = NULL;
			evhttp_cancel_request(req); /* no callback after */
		}
		if (!c->http)
			pg_drop(s); /* the query may still run: start afresh */
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
	/* Lookups still running belong to leads about to go (only when a
	 * batch was given up while stopping). */
	slots_abandon(c);
	if (c->ac && c->redis_outstanding > 0)
		redis_drop(c, "batch abandoned");
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
		c->leads = realloc(c->leads, c->cap_leads * sizeof(*c->leads));
		if (!c->leads)
			abort();
	}
	l = calloc(1, sizeof(*l));
	if (!l)
		abort();
	l->c = c;
	l->ns = ns;
	l->id = strdup(lead_id);
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

void contexts_give_up(struct contexts *c)
{
	for (size_t i = 0; i < c->n_leads; i++) {
		struct lead *l = c->leads[i];

		if (l->phase == PH_DONE)
			continue;
		log_warn("lead %s: no context after the batch's deadline",
			 l->id);
		if (l->timer)
			evtimer_del(l->timer);
		if (l->retry)
			evtimer_del(l->retry);
		lead_finish(l, CTX_UNAVAILABLE, NULL);
	}
	/* Lookups still running answer into nothing: drop them. */
	slots_abandon(c);
	c->q_head = c->q_tail = NULL;
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
