/* Redis invalidation after commit: every key of the affected
 * conversations, in pipelined round trips (UNLINK, generation INCRs,
 * key-index purges, SCAN; never KEYS). What Redis could not confirm stays
 * owed in PostgreSQL (owed.c). */
#include "cache.h"

#include <fnmatch.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "redisconn.h"

#define SCAN_COUNT "1000"
#define UNLINK_CHUNK 512
/* Members read per SSCAN step of a key index: a set of up to about this
 * many members comes whole in one step (a small set's table has fewer
 * buckets than the count; a compactly encoded one comes whole anyway); a
 * huge one comes in steps of about this many, so no reply, and no UNLINK
 * or SREM after it, is unbounded. */
#define SSCAN_COUNT "1000"
#define BUMP_TTL_S "86400"

struct cache {
	struct event_base *base;
	bool no_script; /* EVAL refused once: per-pattern SCANs from then on */
	struct rconn *redis;
	unsigned long long done, removed; /* totals, for the metrics */
	size_t owed; /* what owed.c counts as still owed to Redis */
};

struct strvec {
	char **v;
	size_t n, cap;
};

static void strvec_push(struct strvec *s, char *str)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 16;
		s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
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

/* Each placeholder of tmpl becomes id, glob characters of id escaped when
 * escape says so. */
static char *expand(const char *tmpl, const char *placeholder, const char *id,
		    bool escape)
{
	struct buf b;
	const char *p = tmpl;
	const char *hit;

	buf_init(&b);
	while ((hit = strstr(p, placeholder)) != NULL) {
		buf_append(&b, p, (size_t)(hit - p));
		for (const char *s = id; *s; s++) {
			if (escape && strchr("*?[]\\", *s))
				buf_append(&b, "\\", 1);
			buf_append(&b, s, 1);
		}
		p = hit + strlen(placeholder);
	}
	buf_puts(&b, p);
	return b.data;
}

char *cache_expand(const char *tmpl, const char *placeholder, const char *id,
		   bool *is_pattern)
{
	*is_pattern = strpbrk(tmpl, "*?[") != NULL;
	return expand(tmpl, placeholder, id, *is_pattern);
}

size_t cache_templates_parse(const char *list, char ***out)
{
	char *copy = xstrdup(list), *tok, *save = NULL;
	size_t n = 0;

	*out = NULL;
	for (tok = strtok_r(copy, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		size_t len;

		while (*tok == ' ')
			tok++;
		len = strlen(tok);
		while (len > 0 && tok[len - 1] == ' ')
			tok[--len] = '\0';
		if (!*tok)
			continue;
		*out = xrealloc(*out, (n + 1) * sizeof(char *));
		(*out)[n++] = xstrdup(tok);
	}
	free(copy);
	return n;
}

void cache_templates_free(char **t, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(t[i]);
	free(t);
}

const char *cache_op_name(enum cache_op op)
{
	switch (op) {
	case CACHE_KEY: return "key";
	case CACHE_PATTERN: return "pattern";
	case CACHE_BUMP: return "bump";
	case CACHE_GEN: return "gen";
	case CACHE_INDEX: return "index";
	}
	return "key";
}

bool cache_op_parse(const char *name, enum cache_op *op)
{
	static const enum cache_op ops[] = {CACHE_KEY, CACHE_PATTERN,
					    CACHE_BUMP, CACHE_GEN, CACHE_INDEX};

	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strcmp(name, cache_op_name(ops[i])) == 0) {
			*op = ops[i];
			return true;
		}
	return false;
}

static void templates_add(struct cache_templates *t, const char *list,
			  bool literal, enum cache_op op)
{
	char **v;
	size_t n = cache_templates_parse(list, &v);

	t->v = xrealloc(t->v, (t->n + n + 1) * sizeof(*t->v));
	for (size_t i = 0; i < n; i++) {
		t->v[t->n].tmpl = v[i]; /* owned by t now */
		t->v[t->n].op = literal		       ? op
				: strpbrk(v[i], "*?[") ? CACHE_PATTERN
						       : CACHE_KEY;
		t->n++;
	}
	free(v);
}

void cache_templates_load(struct cache_templates *t, const char *scan,
			  const char *gen, const char *index)
{
	memset(t, 0, sizeof(*t));
	templates_add(t, scan ? scan : "", false, CACHE_KEY);
	templates_add(t, gen ? gen : "", true, CACHE_GEN);
	templates_add(t, index ? index : "", true, CACHE_INDEX);
}

bool cache_templates_check(const struct cache_templates *t,
			   const char *placeholder, const char *what,
			   char *errstr, size_t errstr_size)
{
	for (size_t i = 0; i < t->n; i++) {
		char *pat;
		bool glob;

		if (t->v[i].op != CACHE_PATTERN)
			continue;

		pat = cache_expand(t->v[i].tmpl, placeholder, "id", &glob);
		for (size_t j = 0; j < t->n; j++) {
			char *key;
			bool hit;

			if (t->v[j].op != CACHE_GEN &&
			    t->v[j].op != CACHE_INDEX)
				continue;
			key = cache_expand(t->v[j].tmpl, placeholder, "id",
					   &glob);
			hit = fnmatch(pat, key, 0) == 0;
			free(key);
			if (hit) {
				snprintf(errstr, errstr_size,
					 "%sinvalidate_keys: \"%s\" also "
					 "matches the %s \"%s\", which its "
					 "walk would delete%s",
					 what, t->v[i].tmpl,
					 t->v[j].op == CACHE_GEN
					     ? "generation counter"
					     : "key index",
					 t->v[j].tmpl,
					 t->v[j].op == CACHE_GEN
					     ? " (it would count again from 1)"
					     : "");
				free(pat);
				return false;
			}
		}
		free(pat);
	}
	return true;
}

void cache_templates_clear(struct cache_templates *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->v[i].tmpl);
	free(t->v);
	memset(t, 0, sizeof(*t));
}

char *cache_template_mode(const struct cache_template *t)
{
	const char *how = "";
	struct buf b;

	switch (t->op) {
	case CACHE_KEY: how = "by UNLINK (one key)"; break;
	case CACHE_PATTERN:
		how = "by SCAN (walks the keyspace per batch; see "
		      "docs/caching.md)";
		break;
	case CACHE_BUMP: how = "by version bump"; break;
	case CACHE_GEN: how = "by generation"; break;
	case CACHE_INDEX: how = "by key index"; break;
	}
	buf_init(&b);
	buf_printf(&b, "%s %s", t->tmpl, how);
	return b.data;
}

void cache_templates_log(const struct cache_templates *t)
{
	for (size_t i = 0; i < t->n; i++) {
		char *mode = cache_template_mode(&t->v[i]);

		log_info("cache: %s", mode);
		free(mode);
	}
}

static void keys_push(struct cache_keys *k, char *key, enum cache_op op)
{
	if (k->n == k->cap) {
		k->cap = k->cap ? k->cap * 2 : 16;
		k->v = xrealloc(k->v, k->cap * sizeof(*k->v));
	}
	k->v[k->n].key = key;
	k->v[k->n].op = op;
	k->n++;
}

void cache_keys_add(struct cache_keys *k, char *const *templates,
		    size_t n_templates, const char *placeholder, const char *id)
{
	for (size_t t = 0; t < n_templates; t++) {
		bool pattern;
		char *key =
		    cache_expand(templates[t], placeholder, id, &pattern);

		keys_push(k, key, pattern ? CACHE_PATTERN : CACHE_KEY);
	}
}

void cache_keys_expand(struct cache_keys *k, const struct cache_templates *t,
		       const char *placeholder, const char *id)
{
	for (size_t i = 0; i < t->n; i++) {
		bool pattern;
		char *key;

		if (t->v[i].op == CACHE_GEN || t->v[i].op == CACHE_INDEX) {
			/* A key, not a pattern: the id goes in unescaped. */
			key = expand(t->v[i].tmpl, placeholder, id, false);
			keys_push(k, key, t->v[i].op);
			continue;
		}
		key = cache_expand(t->v[i].tmpl, placeholder, id, &pattern);
		keys_push(k, key, pattern ? CACHE_PATTERN : CACHE_KEY);
	}
}

void cache_keys_bump(struct cache_keys *k, const char *key)
{
	keys_push(k, xstrdup(key), CACHE_BUMP);
}

void cache_keys_push(struct cache_keys *k, const char *key, enum cache_op op)
{
	keys_push(k, xstrdup(key), op);
}

void cache_keys_clear(struct cache_keys *k)
{
	for (size_t i = 0; i < k->n; i++)
		free(k->v[i].key);
	k->n = 0;
}

void cache_keys_free(struct cache_keys *k)
{
	cache_keys_clear(k);
	free(k->v);
	memset(k, 0, sizeof(*k));
}

static int cmp_key(const void *a, const void *b)
{
	const struct cache_key *x = a, *y = b;
	int r = strcmp(x->key, y->key);

	return r ? r : (int)x->op - (int)y->op;
}

/* Sorts and drops repeats: a conversation in 500 records of a batch is
 * invalidated once. */
void cache_keys_unique(struct cache_keys *k)
{
	size_t out = 0;

	if (k->n < 2)
		return; /* also: qsort's array must not be NULL, even empty */
	qsort(k->v, k->n, sizeof(*k->v), cmp_key);
	for (size_t i = 0; i < k->n; i++) {
		if (out > 0 && cmp_key(&k->v[out - 1], &k->v[i]) == 0) {
			free(k->v[i].key);
			continue;
		}
		k->v[out++] = k->v[i];
	}
	k->n = out;
}

struct cache *cache_new(struct event_base *base, const char *url,
			const char *password, int timeout_ms, char *errstr,
			size_t errstr_size)
{
	struct cache *c = xcalloc(1, sizeof(*c));

	c->redis = rconn_new(base, url, password, timeout_ms, "cache", errstr,
			     errstr_size);
	if (!c->redis) {
		free(c);
		return NULL;
	}
	c->base = base;
	return c;
}

void cache_destroy(struct cache *c)
{
	if (!c)
		return;
	rconn_destroy(c->redis);
	free(c);
}

size_t cache_pending(const struct cache *c)
{
	return c->owed;
}

void cache_set_owed(struct cache *c, size_t n)
{
	c->owed = n;
}

void cache_totals(const struct cache *c, unsigned long long *done,
		  unsigned long long *removed)
{
	*done = c->done;
	*removed = c->removed;
}

struct run;

struct scan_job {
	struct run *run;
	char *pattern; /* SCAN MATCH it; for the merged job, the MATCH */
	char cursor[32];
	struct cache *cache;
	char **prefixes; /* the merged job's literal prefixes, else NULL */
	size_t n_prefixes;
};

/* A key index (a set the application SADDs each key it fills to): read in
 * SSCAN steps; what a step found is SREMed from the set and UNLINKed in
 * the next round trip, the two in one MULTI/EXEC. Only those members
 * leave the set (never a DEL of it): a key indexed meanwhile stays
 * indexed for the next invalidation. The transaction keeps the two
 * together: a connection lost between them could otherwise leave keys
 * cached but out of the set, where no later invalidation (the owed one
 * replayed included) would find them, and no fill lands between them. */
struct idx_job {
	struct run *run;
	const char *set;
	char cursor[32];     /* "" once the SSCAN is done */
	struct strvec found; /* this round's members */
	struct strvec purge; /* last round's, SREMed and UNLINKed now */
	size_t unlinks;	     /* UNLINK commands at the head of the EXEC */
};

/* Every "literal*" pattern of a run at once: Redis walks its keyspace
 * once per invalidation instead of once per conversation (a SCAN costs
 * Redis 0.4-0.9 us a key whatever it matches), and UNLINKs what starts
 * with one of the prefixes without sending the keys back. A step walks
 * MERGED_COUNT keys, about 4 ms of Redis time, so it never holds up
 * Redis's other clients for long. ARGV: cursor, MATCH, COUNT, prefixes.
 * Grouping the prefixes by length makes each key one table look-up per
 * distinct length. */
#define MERGED_COUNT "5000"
static const char merged_scan_lua[] =
    "local byl = {}\n"
    "for i = 4, #ARGV do\n"
    "  local p = ARGV[i]\n"
    "  local s = byl[#p]\n"
    "  if not s then s = {}; byl[#p] = s end\n"
    "  s[p] = true\n"
    "end\n"
    "local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', "
    "ARGV[3])\n"
    "local n = 0\n"
    "for _, k in ipairs(r[2]) do\n"
    "  for l, s in pairs(byl) do\n"
    "    if s[string.sub(k, 1, l)] then\n"
    "      n = n + redis.call('UNLINK', k)\n"
    "      break\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {r[1], n}\n";

/* One round trip's replies, gathered by the callbacks below. */
struct run {
	size_t outstanding;
	bool failed;
	bool timed_out;
	long long removed;
	struct strvec found;
};

/* Counts a reply of the round trip in; true when it failed (Redis lost,
 * overdue, or an error, which is logged). */
static bool reply_failed(struct run *r, const redisReply *rep)
{
	r->outstanding--;
	if (rep && rep->type != REDIS_REPLY_ERROR)
		return false;
	if (rep)
		log_warn("redis: %s", rep->str);
	r->failed = true;
	return true;
}

/* hiredis, on the loop: UNLINK answered. */
static void unlink_cb(void *priv, const redisReply *rep)
{
	struct run *r = priv;

	if (!reply_failed(r, rep) && rep->type == REDIS_REPLY_INTEGER)
		r->removed += rep->integer;
}

/* hiredis, on the loop: INCR, EXPIRE, SREM or PING answered; or MULTI's
 * +OK, or a command queued in it. */
static void bump_cb(void *priv, const redisReply *rep)
{
	(void)reply_failed(priv, rep);
}

/* hiredis, on the loop: EXEC of a key index's purge answered: its
 * UNLINKs first (the keys removed), then its SREMs. A nil EXEC (the
 * transaction discarded) or any error in it leaves the purge owed. */
static void idx_exec_cb(void *priv, const redisReply *rep)
{
	struct idx_job *job = priv;
	struct run *r = job->run;

	if (reply_failed(r, rep) || rep->type != REDIS_REPLY_ARRAY) {
		r->failed = true; /* a nil EXEC: the transaction discarded */
		return;
	}
	for (size_t i = 0; i < rep->elements; i++) {
		const redisReply *e = rep->element[i];

		if (e->type == REDIS_REPLY_ERROR) {
			log_warn("redis: %s", e->str);
			r->failed = true;
		} else if (i < job->unlinks && e->type == REDIS_REPLY_INTEGER) {
			r->removed += e->integer;
		}
	}
}

/* hiredis, on the loop: SCAN answered. */
static void scan_cb(void *priv, const redisReply *rep)
{
	struct scan_job *job = priv;
	struct run *r = job->run;

	if (reply_failed(r, rep) || rep->type != REDIS_REPLY_ARRAY ||
	    rep->elements != 2) {
		r->failed = true;
		return;
	}
	snprintf(job->cursor, sizeof(job->cursor), "%s",
		 rep->element[0]->str ? rep->element[0]->str : "0");
	for (size_t k = 0; k < rep->element[1]->elements; k++)
		strvec_push(&r->found,
			    xstrndup(rep->element[1]->element[k]->str,
				     rep->element[1]->element[k]->len));
	if (strcmp(job->cursor, "0") == 0)
		job->cursor[0] = '\0'; /* done */
}

/* hiredis, on the loop: SSCAN of a key index answered {cursor, members}. */
static void sscan_cb(void *priv, const redisReply *rep)
{
	struct idx_job *job = priv;
	struct run *r = job->run;
	const redisReply *m;

	r->outstanding--;
	if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
	    rep->element[0]->type != REDIS_REPLY_STRING ||
	    rep->element[1]->type != REDIS_REPLY_ARRAY) {
		if (rep && rep->type == REDIS_REPLY_ERROR)
			log_warn("redis: key index %s: %s", job->set, rep->str);
		r->failed = true;
		return;
	}
	snprintf(job->cursor, sizeof(job->cursor), "%s", rep->element[0]->str);
	m = rep->element[1];
	for (size_t k = 0; k < m->elements; k++)
		if (m->element[k]->type == REDIS_REPLY_STRING)
			strvec_push(&job->found, xstrndup(m->element[k]->str,
							  m->element[k]->len));
	if (strcmp(job->cursor, "0") == 0)
		job->cursor[0] = '\0'; /* done */
}

/* hiredis, on the loop: the merged SCAN step answered {cursor, removed}. */
static void merged_cb(void *priv, const redisReply *rep)
{
	struct scan_job *job = priv;
	struct run *r = job->run;

	r->outstanding--;
	if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
	    rep->element[0]->type != REDIS_REPLY_STRING ||
	    rep->element[1]->type != REDIS_REPLY_INTEGER) {
		if (rep && rep->type == REDIS_REPLY_ERROR) {
			/* Scripting disabled or refused (ACL, an old
			 * server): this invalidation stays owed and the next
			 * one scans pattern by pattern. */
			log_warn(
			    "redis: merged SCAN refused (%s); scanning each pattern from now on",
			    rep->str);
			job->cache->no_script = true;
		}
		r->failed = true;
		return;
	}
	snprintf(job->cursor, sizeof(job->cursor), "%s", rep->element[0]->str);
	r->removed += rep->element[1]->integer;
	if (strcmp(job->cursor, "0") == 0)
		job->cursor[0] = '\0'; /* done */
}

/* A "literal*" pattern's literal (glob escapes undone), or NULL when the
 * pattern has another wildcard or does not end in one unescaped "*". */
char *cache_prefix_of(const char *pattern)
{
	size_t n = strlen(pattern), o = 0;
	char *lit = xmalloc(n + 1);

	for (size_t i = 0; i < n; i++) {
		if (pattern[i] == '\\' && i + 1 < n) {
			lit[o++] = pattern[++i];
		} else if (pattern[i] == '*' && i + 1 == n) {
			lit[o] = '\0';
			return lit;
		} else if (strchr("*?[]\\", pattern[i])) {
			break;
		} else {
			lit[o++] = pattern[i];
		}
	}
	free(lit);
	return NULL;
}

/* The MATCH of the merged job: the prefixes' common start, escaped, then
 * "*" (Redis filters what it can before the script looks). */
static char *common_match(char **prefixes, size_t n)
{
	size_t len = strlen(prefixes[0]);
	struct buf b;

	for (size_t i = 1; i < n; i++) {
		size_t k = 0;

		while (k < len && prefixes[i][k] == prefixes[0][k])
			k++;
		len = k;
	}
	buf_init(&b);
	for (size_t i = 0; i < len; i++) {
		if (strchr("*?[]\\", prefixes[0][i]))
			buf_append(&b, "\\", 1);
		buf_append(&b, &prefixes[0][i], 1);
	}
	buf_puts(&b, "*");
	return b.data;
}

static void send_cmd(struct cache *c, struct run *r, rconn_reply_fn fn,
		     void *priv, int argc, const char **argv)
{
	if (!rconn_command(c->redis, fn, priv, argc, argv, NULL)) {
		r->failed = true;
		return;
	}
	r->outstanding++;
}

/* cmd [arg] keys..., at most UNLINK_CHUNK keys a command (a huge key
 * index must not become one command that blocks Redis). */
static void send_chunked(struct cache *c, struct run *r, rconn_reply_fn fn,
			 const char *cmd, const char *arg,
			 const struct strvec *keys)
{
	const char *argv[UNLINK_CHUNK + 2];
	int lead = arg ? 2 : 1;

	argv[0] = cmd;
	argv[1] = arg;
	for (size_t i = 0; i < keys->n; i += UNLINK_CHUNK) {
		size_t n =
		    keys->n - i < UNLINK_CHUNK ? keys->n - i : UNLINK_CHUNK;

		for (size_t k = 0; k < n; k++)
			argv[lead + k] = keys->v[i + k];
		send_cmd(c, r, fn, r, lead + (int)n, argv);
	}
}

/* Runs the loop until every reply of the round trip is in: the connection
 * layer answers each command, with NULL when Redis is lost or a reply is
 * overdue by redis_timeout_ms (it then drops the connection and backs
 * off, so a Redis that stays down costs the next batches nothing). */
static bool await_run(struct cache *c, struct run *r)
{
	while (r->outstanding > 0)
		event_base_loop(c->base, EVLOOP_ONCE);
	if (r->failed)
		log_warn(
		    "redis (cache): invalidation not confirmed%s%s; it stays owed",
		    rconn_error(c->redis)[0] ? ": " : "",
		    rconn_error(c->redis));
	return !r->failed;
}

/* EVAL of the merged step: script, no keys, cursor, MATCH, COUNT and the
 * prefixes. */
static void send_merged(struct cache *c, struct run *r, struct scan_job *job)
{
	size_t argc = 6 + job->n_prefixes;
	const char **argv = xmalloc(argc * sizeof(*argv));

	argv[0] = "EVAL";
	argv[1] = merged_scan_lua;
	argv[2] = "0";
	argv[3] = job->cursor;
	argv[4] = job->pattern;
	argv[5] = MERGED_COUNT;
	for (size_t i = 0; i < job->n_prefixes; i++)
		argv[6 + i] = job->prefixes[i];
	send_cmd(c, r, merged_cb, job, (int)argc, argv);
	free(argv);
}

/* One pipelined round trip per SCAN step: the first carries the exact keys'
 * UNLINK, the version and generation bumps, every key index's first SSCAN
 * and every pattern's first SCAN; later ones carry the SREM and UNLINK of
 * what the previous SSCANs found, the UNLINK of what the previous SCANs
 * found, and their next steps. With generations only, that is one round
 * trip; with key indexes of ordinary size, two. */
static long long cache_run(struct cache *c, const struct cache_keys *in)
{
	struct scan_job *jobs = NULL;
	struct idx_job *idx = NULL;
	size_t n_jobs = 0, n_idx = 0;
	struct strvec keys = {0};
	struct run r;
	long long removed = 0;
	bool ok = true, first = true, active = true;

	struct strvec prefixes = {0};

	for (size_t i = 0; i < in->n; i++) {
		char *lit;

		if (in->v[i].op == CACHE_KEY) {
			strvec_push(&keys, xstrdup(in->v[i].key));
		} else if (in->v[i].op == CACHE_INDEX) {
			idx = xrealloc(idx, (n_idx + 1) * sizeof(*idx));
			memset(&idx[n_idx], 0, sizeof(*idx));
			idx[n_idx].set = in->v[i].key; /* in outlives the run */
			strcpy(idx[n_idx].cursor, "0");
			n_idx++;
		} else if (in->v[i].op == CACHE_PATTERN) {
			lit =
			    c->no_script ? NULL : cache_prefix_of(in->v[i].key);
			if (lit) {
				strvec_push(&prefixes, lit);
				continue;
			}
			jobs = xrealloc(jobs, (n_jobs + 1) * sizeof(*jobs));
			memset(&jobs[n_jobs], 0, sizeof(*jobs));
			jobs[n_jobs].pattern = xstrdup(in->v[i].key);
			strcpy(jobs[n_jobs].cursor, "0");
			n_jobs++;
		}
	}
	if (prefixes.n > 0) {
		/* All the "literal*" patterns: one walk of the keyspace. */
		jobs = xrealloc(jobs, (n_jobs + 1) * sizeof(*jobs));
		memset(&jobs[n_jobs], 0, sizeof(*jobs));
		jobs[n_jobs].pattern = common_match(prefixes.v, prefixes.n);
		jobs[n_jobs].cache = c;
		jobs[n_jobs].prefixes = prefixes.v;
		jobs[n_jobs].n_prefixes = prefixes.n;
		strcpy(jobs[n_jobs].cursor, "0");
		n_jobs++;
	}
	while (ok && (active || keys.n > 0 || first)) {
		memset(&r, 0, sizeof(r));
		send_chunked(c, &r, unlink_cb, "UNLINK", NULL, &keys);
		for (size_t i = 0; i < n_idx; i++) {
			const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};

			if (idx[i].purge.n == 0)
				continue;
			idx[i].run = &r;
			idx[i].unlinks =
			    (idx[i].purge.n + UNLINK_CHUNK - 1) / UNLINK_CHUNK;
			send_cmd(c, &r, bump_cb, &r, 1, multi);
			send_chunked(c, &r, bump_cb, "UNLINK", NULL,
				     &idx[i].purge);
			send_chunked(c, &r, bump_cb, "SREM", idx[i].set,
				     &idx[i].purge);
			send_cmd(c, &r, idx_exec_cb, &idx[i], 1, exec);
		}
		for (size_t i = 0; first && i < in->n; i++) {
			const char *incr[2] = {"INCR", in->v[i].key};
			const char *exp[3] = {"EXPIRE", in->v[i].key,
					      BUMP_TTL_S};

			/* A version bump (INCR + EXPIRE) tells a fill that
			 * started before this invalidation not to land. A
			 * generation has no TTL: were it to expire, it would
			 * count again from 1 and readers would find entries
			 * filled under those numbers before. */
			if (in->v[i].op == CACHE_GEN) {
				send_cmd(c, &r, bump_cb, &r, 2, incr);
			} else if (in->v[i].op == CACHE_BUMP) {
				send_cmd(c, &r, bump_cb, &r, 2, incr);
				send_cmd(c, &r, bump_cb, &r, 3, exp);
			}
		}
		first = false;
		active = false;
		for (size_t i = 0; i < n_idx; i++) {
			const char *argv[5] = {"SSCAN", idx[i].set,
					       idx[i].cursor, "COUNT",
					       SSCAN_COUNT};

			if (!idx[i].cursor[0])
				continue;
			idx[i].run = &r;
			send_cmd(c, &r, sscan_cb, &idx[i], 5, argv);
		}
		for (size_t j = 0; j < n_jobs; j++) {
			const char *argv[6] = {"SCAN",	jobs[j].cursor,
					       "MATCH", jobs[j].pattern,
					       "COUNT", SCAN_COUNT};

			if (!jobs[j].cursor[0])
				continue;
			jobs[j].run = &r;
			if (jobs[j].prefixes)
				send_merged(c, &r, &jobs[j]);
			else
				send_cmd(c, &r, scan_cb, &jobs[j], 6, argv);
		}
		ok = await_run(c, &r);
		if (ok)
			removed += r.removed;
		strvec_free(&keys);
		keys = r.found;
		for (size_t j = 0; j < n_jobs; j++)
			active = active || jobs[j].cursor[0];
		for (size_t i = 0; i < n_idx; i++) {
			strvec_free(&idx[i].purge);
			idx[i].purge = idx[i].found;
			memset(&idx[i].found, 0, sizeof(idx[i].found));
			active =
			    active || idx[i].cursor[0] || idx[i].purge.n > 0;
		}
	}
	strvec_free(&keys);
	for (size_t j = 0; j < n_jobs; j++)
		free(jobs[j].pattern);
	free(jobs);
	for (size_t i = 0; i < n_idx; i++) {
		strvec_free(&idx[i].found);
		strvec_free(&idx[i].purge);
	}
	free(idx);
	strvec_free(&prefixes);
	if (ok) {
		c->done += in->n;
		c->removed += (unsigned long long)removed;
	}
	return ok ? removed : -1;
}

bool cache_ping(struct cache *c)
{
	const char *argv[1] = {"PING"};
	struct run r;

	memset(&r, 0, sizeof(r));
	send_cmd(c, &r, bump_cb, &r, 1, argv);
	return !r.failed && await_run(c, &r);
}

long long cache_invalidate(struct cache *c, struct cache_keys *k)
{
	if (k->n == 0)
		return 0;
	cache_keys_unique(k);
	if (!rconn_up(c->redis))
		return -1; /* in the back-off: nothing sent */
	return cache_run(c, k);
}
