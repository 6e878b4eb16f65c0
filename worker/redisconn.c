/* One Redis connection on the worker's event_base, shared mechanism of
 * every service that talks to Redis: lazy connect (AUTH and SELECT first),
 * a watch on overdue replies, and reconnection after a capped back-off
 * with jitter. */
#include "redisconn.h"

#include <hiredis/adapters/libevent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/* A command sent and not answered yet, in the order sent (Redis answers
 * in that order, so the head is the oldest). */
struct pending {
	struct rconn *r; /* NULL once the rconn is destroyed */
	rconn_reply_fn fn;
	void *arg;
	int64_t sent_ms;
	struct pending *prev, *next;
};

struct rconn {
	struct event_base *base;
	struct redis_addr addr;
	char *who;
	int timeout_ms;
	redisAsyncContext *ac; /* NULL: not connected */
	bool up;	       /* this connection answered once */
	bool down;	       /* the last attempt failed: logged once */
	int64_t down_since_ms;
	int64_t retry_at_ms; /* no attempt before this */
	struct backoff bo;
	/* Overdue replies, and drops asked from inside a hiredis callback
	 * (the connection is never freed there). */
	struct event *watch;
	char drop_why[192];
	struct pending *head, *tail;
	int n_pending;
	char err[256];
};

/* ------------------------------------------------------------ addresses */

bool redis_addr_parse(const char *url, struct redis_addr *a, char *errstr,
		      size_t errstr_size)
{
	const char *hp = url + strlen("redis://");
	const char *colon, *slash;

	memset(a, 0, sizeof(*a));
	if (strncmp(url, "redis://", 8) != 0) {
		snprintf(errstr, errstr_size, "redis_url: expected redis://");
		return false;
	}
	if (strchr(hp, '@') &&
	    (!strchr(hp, '/') || strchr(hp, '@') < strchr(hp, '/'))) {
		const char *at = strchr(hp, '@');
		const char *sep = memchr(hp, ':', (size_t)(at - hp));

		if (sep) {
			if (sep > hp)
				a->user = xstrndup(hp, (size_t)(sep - hp));
			a->password = xstrndup(sep + 1, (size_t)(at - sep - 1));
		} else {
			a->password = xstrndup(hp, (size_t)(at - hp));
		}
		hp = at + 1;
	}
	slash = strchr(hp, '/');
	colon = strchr(hp, ':');
	if (colon && slash && colon > slash)
		colon = NULL;
	a->host = xstrndup(hp, (size_t)((colon	 ? colon
					 : slash ? slash
						 : hp + strlen(hp)) -
					hp));
	a->port = colon ? atoi(colon + 1) : 6379;
	a->db = slash ? atoi(slash + 1) : 0;
	if (!a->host[0] || a->port <= 0 || a->port > 65535) {
		snprintf(errstr, errstr_size, "redis_url: bad host or port");
		redis_addr_free(a);
		return false;
	}
	return true;
}

void redis_addr_set_password(struct redis_addr *a, const char *password)
{
	if (!password)
		return;
	if (a->password) {
		memset(a->password, 0, strlen(a->password));
		free(a->password);
	}
	a->password = xstrdup(password);
}

void redis_addr_free(struct redis_addr *a)
{
	free(a->host);
	free(a->user);
	if (a->password)
		memset(a->password, 0, strlen(a->password));
	free(a->password);
	memset(a, 0, sizeof(*a));
}

/* hiredis, on the loop: AUTH or SELECT answered, for redis_async_open's
 * callers, which learn of a refusal from their commands' replies. */
static void setup_log_cb(redisAsyncContext *ac, void *reply, void *priv)
{
	redisReply *r = reply;

	(void)priv;
	if (r && r->type == REDIS_REPLY_ERROR)
		log_warn("redis %s: %s", ac->c.tcp.host ? ac->c.tcp.host : "",
			 r->str);
}

static redisAsyncContext *
async_open(struct event_base *base, const struct redis_addr *a, void *data,
	   redisConnectCallback *on_connect,
	   redisDisconnectCallback *on_disconnect, redisCallbackFn *setup_fn,
	   void *setup_priv, char *errstr, size_t errstr_size)
{
	redisAsyncContext *ac = redisAsyncConnect(a->host, a->port);

	if (!ac || ac->err) {
		snprintf(errstr, errstr_size, "%s",
			 ac ? ac->errstr : "cannot allocate");
		if (ac)
			redisAsyncFree(ac);
		return NULL;
	}
	ac->data = data;
	redisLibeventAttach(ac, base);
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	/* Queued first, so they run first once connected. */
	if (a->password) {
		if (a->user)
			redisAsyncCommand(ac, setup_fn, setup_priv,
					  "AUTH %s %s", a->user, a->password);
		else
			redisAsyncCommand(ac, setup_fn, setup_priv, "AUTH %s",
					  a->password);
	}
	if (a->db != 0)
		redisAsyncCommand(ac, setup_fn, setup_priv, "SELECT %d", a->db);
	return ac;
}

redisAsyncContext *redis_async_open(struct event_base *base,
				    const struct redis_addr *a, void *data,
				    redisConnectCallback *on_connect,
				    redisDisconnectCallback *on_disconnect,
				    char *errstr, size_t errstr_size)
{
	return async_open(base, a, data, on_connect, on_disconnect,
			  setup_log_cb, NULL, errstr, errstr_size);
}

/* ------------------------------------------------------------ state */

/* The connection failed or went: back off, and say so once (the repeated
 * failures of an outage go to debug). */
static void went_down(struct rconn *r, const char *why)
{
	int wait = backoff_next(&r->bo);
	int64_t now = util_mono_ms();

	r->up = false;
	r->retry_at_ms = now + wait;
	snprintf(r->err, sizeof(r->err), "%s", why);
	if (!r->down) {
		r->down = true;
		r->down_since_ms = now;
		log_warn("redis %s:%d (%s): %s; retrying in %d ms",
			 r->addr.host, r->addr.port, r->who, why, wait);
	} else {
		log_debug("redis %s:%d (%s): still down: %s; retrying in %d ms",
			  r->addr.host, r->addr.port, r->who, why, wait);
	}
}

/* Drops the connection (never from inside a hiredis callback): every
 * pending command's callback gets NULL, while rconn_command() already
 * refuses (in back-off), so none of them can send again into it. */
static void rconn_drop(struct rconn *r, const char *why)
{
	redisAsyncContext *ac = r->ac;

	if (!ac)
		return;
	r->ac = NULL;
	went_down(r, why);
	ac->data = NULL; /* its disconnect callback is about nobody now */
	redisAsyncFree(ac);
}

static void watch_arm(struct rconn *r, int64_t ms)
{
	struct timeval tv = util_ms_tv(ms > 0 ? ms : 0);

	evtimer_add(r->watch, &tv);
}

/* Loop timer: the oldest reply is overdue (drop, so its command and every
 * one after it fail now rather than whenever Redis wakes up), or a drop
 * was asked from inside a callback. */
static void handle_watch(evutil_socket_t fd, short what, void *arg)
{
	struct rconn *r = arg;
	int64_t late;

	(void)fd;
	(void)what;
	if (r->drop_why[0]) {
		char why[sizeof(r->drop_why)];

		snprintf(why, sizeof(why), "%s", r->drop_why);
		r->drop_why[0] = '\0';
		rconn_drop(r, why);
	}
	if (!r->head || !r->ac)
		return;
	late = util_mono_ms() - r->head->sent_ms;
	if (late >= r->timeout_ms) {
		char why[64];

		snprintf(why, sizeof(why), "no answer in %d ms", r->timeout_ms);
		rconn_drop(r, why);
		return;
	}
	watch_arm(r, r->timeout_ms - late);
}

static void drop_soon(struct rconn *r, const char *why)
{
	if (!r->drop_why[0])
		snprintf(r->drop_why, sizeof(r->drop_why), "%s", why);
	watch_arm(r, 0);
}

/* The connection answered (a reply, not just a TCP handshake: a stopped
 * Redis still completes those): the back-off starts again from its
 * minimum and the error clears. */
static void answered(struct rconn *r)
{
	if (r->up || r->drop_why[0])
		return; /* a refused AUTH's NOAUTH replies prove nothing */
	r->up = true;
	backoff_reset(&r->bo);
	r->err[0] = '\0';
	if (r->down)
		log_info("redis %s:%d (%s): answering again after %lld ms",
			 r->addr.host, r->addr.port, r->who,
			 (long long)(util_mono_ms() - r->down_since_ms));
	else
		log_info("redis %s:%d (%s): connected", r->addr.host,
			 r->addr.port, r->who);
	r->down = false;
}

/* hiredis, on the loop: AUTH or SELECT answered. A refusal (a wrong
 * password, a database that does not exist) makes every command fail, so
 * the connection goes and the error is what /readyz shows. */
static void setup_cb(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rconn *r = ac->data;
	redisReply *rep = reply;
	char why[192];

	(void)priv;
	if (!r || r->ac != ac || !rep)
		return;
	if (rep->type != REDIS_REPLY_ERROR) {
		answered(r);
		return;
	}
	snprintf(why, sizeof(why), "setup refused: %s", rep->str);
	drop_soon(r, why);
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
	struct rconn *r = ac->data;

	if (!r || r->ac != ac || status == REDIS_OK)
		return;
	r->ac = NULL; /* hiredis frees it */
	went_down(r, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void disconnect_cb(const redisAsyncContext *ac, int status)
{
	struct rconn *r = ac->data;

	if (!r || r->ac != ac)
		return;
	r->ac = NULL; /* hiredis frees it */
	went_down(r, status == REDIS_OK || !ac->errstr[0] ? "connection closed"
							  : ac->errstr);
}

/* hiredis, on the loop: one command's reply, or NULL when the connection
 * went before it came. */
static void reply_cb(redisAsyncContext *ac, void *reply, void *priv)
{
	struct pending *p = priv;
	struct rconn *r = p->r;

	if (r) {
		if (reply && r->ac == ac)
			answered(r);
		if (p->prev)
			p->prev->next = p->next;
		else
			r->head = p->next;
		if (p->next)
			p->next->prev = p->prev;
		else
			r->tail = p->prev;
		r->n_pending--;
		if (p->fn)
			p->fn(p->arg, reply);
	}
	free(p);
}

/* ------------------------------------------------------------ the API */

struct rconn *rconn_new(struct event_base *base, const char *url,
			const char *password, int timeout_ms, const char *who,
			char *errstr, size_t errstr_size)
{
	struct rconn *r = xcalloc(1, sizeof(*r));

	if (!redis_addr_parse(url, &r->addr, errstr, errstr_size)) {
		free(r);
		return NULL;
	}
	redis_addr_set_password(&r->addr, password);
	r->base = base;
	r->who = xstrdup(who);
	r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
	backoff_init(&r->bo, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
	r->watch = evtimer_new(base, handle_watch, r);
	if (!r->watch)
		abort();
	return r;
}

void rconn_destroy(struct rconn *r)
{
	if (!r)
		return;
	/* The callers' objects may be gone: their callbacks are not called
	 * from here on. */
	for (struct pending *p = r->head; p; p = p->next)
		p->r = NULL;
	r->head = r->tail = NULL;
	if (r->ac) {
		redisAsyncContext *ac = r->ac;

		r->ac = NULL;
		ac->data = NULL;
		redisAsyncFree(ac);
	}
	event_free(r->watch);
	redis_addr_free(&r->addr);
	free(r->who);
	free(r);
}

static bool rconn_connect(struct rconn *r)
{
	char err[256];

	if (r->ac)
		return true;
	if (util_mono_ms() < r->retry_at_ms)
		return false;
	r->up = false;
	r->ac = async_open(r->base, &r->addr, r, connect_cb, disconnect_cb,
			   setup_cb, NULL, err, sizeof(err));
	if (!r->ac) {
		went_down(r, err);
		return false;
	}
	return true;
}

bool rconn_command(struct rconn *r, rconn_reply_fn fn, void *arg, int argc,
		   const char **argv, const size_t *argvlen)
{
	struct pending *p;

	if (!rconn_connect(r))
		return false;
	p = xcalloc(1, sizeof(*p));
	p->r = r;
	p->fn = fn;
	p->arg = arg;
	p->sent_ms = util_mono_ms();
	/* Refused when the connection is already going (its callbacks are
	 * running): the caller treats it as Redis being down. */
	if (redisAsyncCommandArgv(r->ac, reply_cb, p, argc, argv, argvlen) !=
	    REDIS_OK) {
		free(p);
		return false;
	}
	p->prev = r->tail;
	if (r->tail)
		r->tail->next = p;
	else
		r->head = p;
	r->tail = p;
	if (r->n_pending++ == 0 && !evtimer_pending(r->watch, NULL))
		watch_arm(r, r->timeout_ms);
	return true;
}

bool rconn_up(const struct rconn *r)
{
	return r->ac != NULL || util_mono_ms() >= r->retry_at_ms;
}

int rconn_pending(const struct rconn *r)
{
	return r->n_pending;
}

const char *rconn_error(const struct rconn *r)
{
	return r->err;
}
