/* Redis invalidation after commit: every key of the affected
 * conversations, in pipelined round trips (SCAN + UNLINK, never KEYS). */
#include "cache.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "../common/log.h"
#include "../common/util.h"

#define PLACEHOLDER "{conversation_id}"
#define SCAN_COUNT "1000"
#define UNLINK_CHUNK 512
#define PENDING_MAX 100000

struct cache {
	char *host;
	int port;
	int db;
	char *user;	/* from redis://user:password@host, optional */
	char *password; /* never logged */
	int timeout_ms;
	char **templates;
	size_t n_templates;
	redisContext *ctx;
	int64_t retry_at_ms; /* no connection attempt before this */
	int backoff_ms;
	char **pending; /* conversation ids whose invalidation was deferred */
	size_t n_pending;
	bool pending_overflow_logged;
};

struct strvec {
	char **v;
	size_t n, cap;
};

static void strvec_push(struct strvec *s, char *str)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 16;
		s->v = realloc(s->v, s->cap * sizeof(*s->v));
		if (!s->v)
			abort();
	}
	s->v[s->n++] = str;
}

static void strvec_free(struct strvec *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	s->v = NULL;
	s->n = s->cap = 0;
}

char *cache_expand(const char *tmpl, const char *id, bool *is_pattern)
{
	struct buf b;
	const char *p = tmpl;
	const char *hit;

	*is_pattern = strpbrk(tmpl, "*?[") != NULL;
	buf_init(&b);
	while ((hit = strstr(p, PLACEHOLDER)) != NULL) {
		buf_append(&b, p, (size_t)(hit - p));
		for (const char *s = id; *s; s++) {
			if (*is_pattern && strchr("*?[]\\", *s))
				buf_append(&b, "\\", 1);
			buf_append(&b, s, 1);
		}
		p = hit + strlen(PLACEHOLDER);
	}
	buf_puts(&b, p);
	return b.data;
}

struct cache *cache_new(const char *url, int timeout_ms, const char *templates,
			char *errstr, size_t errstr_size)
{
	struct cache *c = calloc(1, sizeof(*c));
	const char *hp = url + strlen("redis://");
	const char *colon, *slash;
	char *list, *tok, *save = NULL;

	if (!c)
		abort();
	if (strncmp(url, "redis://", 8) != 0) {
		snprintf(errstr, errstr_size, "redis_url: expected redis://");
		free(c);
		return NULL;
	}
	if (strchr(hp, '@') &&
	    (!strchr(hp, '/') || strchr(hp, '@') < strchr(hp, '/'))) {
		const char *at = strchr(hp, '@');
		const char *sep = memchr(hp, ':', (size_t)(at - hp));

		if (sep) {
			if (sep > hp)
				c->user = strndup(hp, (size_t)(sep - hp));
			c->password = strndup(sep + 1, (size_t)(at - sep - 1));
		} else {
			c->password = strndup(hp, (size_t)(at - hp));
		}
		hp = at + 1;
	}
	slash = strchr(hp, '/');
	colon = strchr(hp, ':');
	if (colon && slash && colon > slash)
		colon = NULL;
	c->host = strndup(hp, (size_t)((colon	? colon
					: slash ? slash
						: hp + strlen(hp)) -
				       hp));
	c->port = colon ? atoi(colon + 1) : 6379;
	c->db = slash ? atoi(slash + 1) : 0;
	c->timeout_ms = timeout_ms;
	c->backoff_ms = 100;
	if (!c->host[0] || c->port <= 0 || c->port > 65535) {
		snprintf(errstr, errstr_size, "redis_url: bad host or port");
		cache_destroy(c);
		return NULL;
	}
	list = strdup(templates);
	for (tok = strtok_r(list, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		if (!*tok)
			continue;
		c->templates = realloc(c->templates,
				       (c->n_templates + 1) * sizeof(char *));
		if (!c->templates)
			abort();
		c->templates[c->n_templates++] = strdup(tok);
	}
	free(list);
	return c;
}

void cache_destroy(struct cache *c)
{
	if (!c)
		return;
	if (c->ctx)
		redisFree(c->ctx);
	for (size_t i = 0; i < c->n_templates; i++)
		free(c->templates[i]);
	free(c->templates);
	for (size_t i = 0; i < c->n_pending; i++)
		free(c->pending[i]);
	free(c->pending);
	free(c->host);
	free(c->user);
	free(c->password);
	free(c);
}

size_t cache_pending(const struct cache *c)
{
	return c->n_pending;
}

static void cache_fail(struct cache *c, const char *why)
{
	log_warn("redis %s:%d: %s; invalidation deferred, retrying in %d ms",
		 c->host, c->port, why, c->backoff_ms);
	if (c->ctx)
		redisFree(c->ctx);
	c->ctx = NULL;
	c->retry_at_ms = util_mono_ms() + c->backoff_ms;
	c->backoff_ms = c->backoff_ms * 2 > 5000 ? 5000 : c->backoff_ms * 2;
}

static bool cache_connect(struct cache *c)
{
	struct timeval tv = {c->timeout_ms / 1000,
			     (c->timeout_ms % 1000) * 1000};

	if (c->ctx)
		return true;
	if (util_mono_ms() < c->retry_at_ms)
		return false;
	c->ctx = redisConnectWithTimeout(c->host, c->port, tv);
	if (!c->ctx || c->ctx->err) {
		cache_fail(c, c->ctx ? c->ctx->errstr : "cannot allocate");
		return false;
	}
	redisSetTimeout(c->ctx, tv);
	if (c->password) {
		redisReply *r =
		    c->user ? redisCommand(c->ctx, "AUTH %s %s", c->user,
					   c->password)
			    : redisCommand(c->ctx, "AUTH %s", c->password);
		bool ok = r && r->type != REDIS_REPLY_ERROR;

		if (r)
			freeReplyObject(r);
		if (!ok) {
			cache_fail(c, "AUTH failed");
			return false;
		}
	}
	if (c->db != 0) {
		redisReply *r = redisCommand(c->ctx, "SELECT %d", c->db);
		bool ok = r && r->type != REDIS_REPLY_ERROR;

		if (r)
			freeReplyObject(r);
		if (!ok) {
			cache_fail(c, "SELECT failed");
			return false;
		}
	}
	c->backoff_ms = 100;
	return true;
}

struct scan_job {
	char *pattern;
	char cursor[32];
};

static void append_unlinks(redisContext *ctx, struct strvec *keys,
			   size_t *replies)
{
	const char *argv[UNLINK_CHUNK + 1];

	for (size_t i = 0; i < keys->n; i += UNLINK_CHUNK) {
		size_t n =
		    keys->n - i < UNLINK_CHUNK ? keys->n - i : UNLINK_CHUNK;

		argv[0] = "UNLINK";
		for (size_t k = 0; k < n; k++)
			argv[k + 1] = keys->v[i + k];
		redisAppendCommandArgv(ctx, (int)n + 1, argv, NULL);
		(*replies)++;
	}
}

/* One pipelined round trip per SCAN step: the first carries the exact keys'
 * UNLINK and every pattern's first SCAN; later ones carry the UNLINK of
 * what the previous SCANs found and their next steps. */
static long long cache_run(struct cache *c, char *const *ids, size_t n)
{
	struct scan_job *jobs = NULL;
	size_t n_jobs = 0, active;
	struct strvec keys = {0};
	long long removed = 0;
	bool ok = true;

	for (size_t i = 0; i < n; i++) {
		for (size_t t = 0; t < c->n_templates; t++) {
			bool pattern;
			char *k =
			    cache_expand(c->templates[t], ids[i], &pattern);

			if (!pattern) {
				strvec_push(&keys, k);
				continue;
			}
			jobs = realloc(jobs, (n_jobs + 1) * sizeof(*jobs));
			if (!jobs)
				abort();
			jobs[n_jobs].pattern = k;
			strcpy(jobs[n_jobs].cursor, "0");
			n_jobs++;
		}
	}
	active = n_jobs;
	while (ok && (active > 0 || keys.n > 0)) {
		size_t replies = 0, unlink_replies;
		struct strvec found = {0};

		append_unlinks(c->ctx, &keys, &replies);
		unlink_replies = replies;
		for (size_t j = 0; j < n_jobs; j++) {
			if (!jobs[j].cursor[0])
				continue;
			redisAppendCommand(c->ctx,
					   "SCAN %s MATCH %s COUNT " SCAN_COUNT,
					   jobs[j].cursor, jobs[j].pattern);
			replies++;
		}
		for (size_t r = 0, j = 0; r < replies; r++) {
			redisReply *rep = NULL;

			if (redisGetReply(c->ctx, (void **)&rep) != REDIS_OK ||
			    !rep) {
				ok = false;
				break;
			}
			if (rep->type == REDIS_REPLY_ERROR) {
				log_warn("redis: %s", rep->str);
				ok = false;
			} else if (r < unlink_replies) {
				if (rep->type == REDIS_REPLY_INTEGER)
					removed += rep->integer;
			} else {
				while (!jobs[j].cursor[0])
					j++;
				if (rep->type == REDIS_REPLY_ARRAY &&
				    rep->elements == 2) {
					redisReply *cur = rep->element[0];
					redisReply *arr = rep->element[1];

					snprintf(jobs[j].cursor,
						 sizeof(jobs[j].cursor), "%s",
						 cur->str ? cur->str : "0");
					for (size_t k = 0; k < arr->elements;
					     k++)
						strvec_push(
						    &found,
						    strndup(
							arr->element[k]->str,
							arr->element[k]->len));
				}
				if (strcmp(jobs[j].cursor, "0") == 0) {
					jobs[j].cursor[0] = '\0';
					active--;
				}
				j++;
			}
			freeReplyObject(rep);
		}
		strvec_free(&keys);
		keys = found;
	}
	strvec_free(&keys);
	for (size_t j = 0; j < n_jobs; j++)
		free(jobs[j].pattern);
	free(jobs);
	if (!ok) {
		cache_fail(c, c->ctx && c->ctx->err ? c->ctx->errstr
						    : "command failed");
		return -1;
	}
	return removed;
}

static void cache_defer(struct cache *c, char *const *ids, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (c->n_pending >= PENDING_MAX) {
			if (!c->pending_overflow_logged)
				log_error("redis down: more than %d deferred "
					  "invalidations, dropping the rest "
					  "(their keys expire by TTL)",
					  PENDING_MAX);
			c->pending_overflow_logged = true;
			return;
		}
		c->pending =
		    realloc(c->pending, (c->n_pending + 1) * sizeof(char *));
		if (!c->pending)
			abort();
		c->pending[c->n_pending++] = strdup(ids[i]);
	}
}

void cache_retry(struct cache *c)
{
	char **ids = c->pending;
	size_t n = c->n_pending;
	long long removed;

	if (n == 0 || !cache_connect(c))
		return;
	c->pending = NULL;
	c->n_pending = 0;
	removed = cache_run(c, ids, n);
	if (removed < 0) {
		cache_defer(c, ids, n);
	} else {
		log_info("redis back: ran %zu deferred invalidations, removed "
			 "%lld keys",
			 n, removed);
		c->pending_overflow_logged = false;
	}
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
}

long long cache_invalidate(struct cache *c, char *const *ids, size_t n)
{
	long long removed;

	if (n == 0 || c->n_templates == 0)
		return 0;
	cache_retry(c);
	if (!cache_connect(c)) {
		cache_defer(c, ids, n);
		return -1;
	}
	removed = cache_run(c, ids, n);
	if (removed < 0)
		cache_defer(c, ids, n);
	return removed;
}
