/* The Redis invalidations a commit owes, kept in PostgreSQL until Redis
 * confirms them (sluice_owed_invalidations). */
#include "owed.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"

/* Batches' rows read and performed per round when catching up (each holds
 * at most batch_max records' keys). */
#define OWED_PAGE 10
#define OWED_PAGE_S "10"

/* The batch's keys in, as one row (arrays: one tuple and one index entry
 * per batch, where a row per key cost several times more on the hot
 * path), and the rows confirmed since the last commit out, in one
 * statement: the DELETE piggybacks on the INSERT, so a confirmed
 * invalidation costs no round trip of its own under load. A
 * data-modifying WITH runs whether or not the query reads it. */
static const char SQL_WRITE[] =
    "WITH done AS (DELETE FROM sluice_owed_invalidations"
    " WHERE id = ANY($6::bigint[]))"
    " INSERT INTO sluice_owed_invalidations"
    " (group_id, topic, partitions, keys, ops)"
    " SELECT $1, $2, $3::int[], $4::text[], $5::text[]"
    " WHERE cardinality($4::text[]) > 0 RETURNING id";

static const char SQL_DELETE[] =
    "DELETE FROM sluice_owed_invalidations WHERE id = ANY($1::bigint[])";

/* A page of batches in id order (so a page ends where the next begins),
 * one result row per key. */
static const char SQL_SCAN[] =
    "SELECT b.id, u.k, u.o FROM (SELECT id, keys, ops"
    " FROM sluice_owed_invalidations"
    " WHERE group_id = $1 AND topic = $2 AND partitions && $3::int[]"
    " AND id > $4::bigint ORDER BY id LIMIT " OWED_PAGE_S ") AS b,"
    " unnest(b.keys, b.ops) AS u(k, o) ORDER BY b.id";

static const char SQL_COUNT[] =
    "SELECT coalesce(sum(cardinality(keys)), 0)"
    " FROM sluice_owed_invalidations"
    " WHERE group_id = $1 AND topic = $2 AND partitions && $3::int[]";

/* A small set of partitions. */
struct partset {
	int32_t *v;
	int n, cap;
};

struct owed {
	struct pgsink *ps;
	struct cache *cache;
	/* The open transaction's row id, its number of keys and its
	 * partitions; tx_n > 0 also means a transaction wrote a row whose
	 * fate owed_committed() has not told yet. */
	struct buf tx_ids;
	size_t tx_n;
	struct partset tx_parts;
	bool tx_deletes; /* it also deletes done */
	struct buf done; /* confirmed rows not deleted yet: "1,2,3" */
	/* What a catch-up covers: the partitions held, and those of this
	 * worker's own batches that Redis did not confirm (a replay has no
	 * group assignment; a partition revoked meanwhile is performed by
	 * both owners, which is harmless). */
	struct partset held, mine;
	bool catch_up;	 /* rows in scope may be owed: perform them */
	char cursor[24]; /* the catch-up went up to this id */
	size_t cu_rows;	 /* and performed these keys since cu_t0 */
	long long cu_removed;
	int64_t cu_t0;
	bool recount;	     /* n is not known for the scope yet */
	size_t n;	     /* keys in scope owed */
	int64_t retry_at_ms; /* PostgreSQL failed: no upkeep before this */
	/* What the outbox costs the batches, for the log at exit. */
	unsigned long long writes, write_keys;
	double write_s;
	struct backoff backoff; /* after PostgreSQL refused the upkeep */
};

static void partset_add(struct partset *s, int32_t p)
{
	for (int i = 0; i < s->n; i++)
		if (s->v[i] == p)
			return;
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 8;
		s->v = xrealloc(s->v, (size_t)s->cap * sizeof(*s->v));
	}
	s->v[s->n++] = p;
}

static void partset_set(struct partset *s, const int32_t *v, int n)
{
	s->n = 0;
	for (int i = 0; i < n; i++)
		partset_add(s, v[i]);
}

static void owed_publish(struct owed *o)
{
	cache_set_owed(o->cache, o->n);
}

struct owed *owed_new(struct pgsink *ps, struct cache *cache)
{
	struct owed *o = xcalloc(1, sizeof(*o));

	o->ps = ps;
	o->cache = cache;
	buf_init(&o->tx_ids);
	buf_init(&o->done);
	strcpy(o->cursor, "0");
	backoff_init(&o->backoff, 100, 5000);
	return o;
}

void owed_destroy(struct owed *o)
{
	if (!o)
		return;
	if (o->writes > 0)
		log_info(
		    "outbox: %llu statements wrote %llu keys in %.0f ms (%.2f ms a statement)",
		    o->writes, o->write_keys, o->write_s * 1000,
		    o->write_s * 1000 / (double)o->writes);
	buf_free(&o->tx_ids);
	buf_free(&o->done);
	free(o->tx_parts.v);
	free(o->held.v);
	free(o->mine.v);
	free(o);
}

size_t owed_count(const struct owed *o)
{
	return o->n;
}

/* The keys, or their ops, as a text[] literal for a query parameter. */
static void text_array(struct buf *b, const struct cache_keys *k, bool ops)
{
	const char **v = xcalloc(k->n + 1, sizeof(*v));

	for (size_t i = 0; i < k->n; i++)
		v[i] = ops ? cache_op_name(k->v[i].op) : k->v[i].key;
	buf_pg_array(b, v, k->n);
	free(v);
}

static char *int_array(const int32_t *v, int n)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "{");
	for (int i = 0; i < n; i++)
		buf_printf(&b, "%s%d", i ? "," : "", (int)v[i]);
	buf_puts(&b, "}");
	return b.data;
}

/* The partitions a catch-up covers: "{0,3}". */
static char *scope_array(const struct owed *o)
{
	struct partset u = {0};
	char *a;

	partset_set(&u, o->held.v, o->held.n);
	for (int i = 0; i < o->mine.n; i++)
		partset_add(&u, o->mine.v[i]);
	a = int_array(u.v, u.n);
	free(u.v);
	return a;
}

static bool scope_empty(const struct owed *o)
{
	return o->held.n == 0 && o->mine.n == 0;
}

/* "{" list "}" */
static char *id_array(const struct buf *list)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "{");
	if (list->len > 0)
		buf_append(&b, list->data, list->len);
	buf_puts(&b, "}");
	return b.data;
}

static void list_append(struct buf *list, const char *ids, size_t len)
{
	if (len == 0)
		return;
	if (list->len > 0)
		buf_append(list, ",", 1);
	buf_append(list, ids, len);
}

bool owed_write(struct owed *o, const int32_t *parts, int n,
		const struct cache_keys *keys, char *errstr, size_t errstr_size)
{
	struct buf k, ops;
	char *pa, *done;
	const char *params[6];
	PGresult *res;
	double t0;

	/* A write whose commit never reported back: the commit may still
	 * have landed (its answer lost), and its rows with it. */
	if (o->tx_n > 0) {
		o->catch_up = true;
		o->recount = true;
		for (int i = 0; i < o->tx_parts.n; i++)
			partset_add(&o->mine, o->tx_parts.v[i]);
	}
	buf_reset(&o->tx_ids);
	o->tx_n = 0;
	o->tx_deletes = false;
	if (keys->n == 0 && o->done.len == 0)
		return true;
	buf_init(&k);
	buf_init(&ops);
	text_array(&k, keys, false);
	text_array(&ops, keys, true);
	pa = int_array(parts, n);
	done = id_array(&o->done);
	params[0] = pgsink_group_id(o->ps);
	params[1] = pgsink_topic(o->ps);
	params[2] = pa;
	params[3] = k.data;
	params[4] = ops.data;
	params[5] = done;
	t0 = util_mono_s();
	res = pgsink_query(o->ps, SQL_WRITE, 6, params, "owed invalidations",
			   errstr, errstr_size);
	buf_free(&k);
	buf_free(&ops);
	free(pa);
	free(done);
	o->write_s += util_mono_s() - t0;
	if (!res) {
		/* Not the records' fault: the outbox itself refused (a kind
		 * of invalidation its CHECK does not know yet). Bisecting
		 * the batch would find no record to blame and start over
		 * for ever; it is retried as any database failure is. */
		if (pgsink_data_error(o->ps)) {
			log_error(
			    "owed invalidations: the outbox refused this batch's invalidations (%s); generation and key-index modes need migration 007_cache_modes.sql (deploy/migrate.sh)",
			    errstr);
			pgsink_clear_error(o->ps);
		}
		return false;
	}
	o->writes++;
	o->write_keys += keys->n;
	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
		buf_append(&o->tx_ids, PQgetvalue(res, 0, 0),
			   (size_t)PQgetlength(res, 0, 0));
	PQclear(res);
	o->tx_n = keys->n;
	partset_set(&o->tx_parts, parts, n);
	o->tx_deletes = o->done.len > 0;
	return true;
}

void owed_committed(struct owed *o, bool confirmed)
{
	if (o->tx_deletes)
		buf_reset(&o->done);
	if (confirmed) {
		list_append(&o->done, o->tx_ids.data, o->tx_ids.len);
	} else if (o->tx_n > 0) {
		/* Owed until Redis answers; the rows are the record. */
		o->n += o->tx_n;
		o->catch_up = true;
		for (int i = 0; i < o->tx_parts.n; i++)
			partset_add(&o->mine, o->tx_parts.v[i]);
		owed_publish(o);
	}
	buf_reset(&o->tx_ids);
	o->tx_n = 0;
	o->tx_deletes = false;
}

void owed_assign(struct owed *o, const int32_t *parts, int n)
{
	partset_set(&o->held, parts, n);
	strcpy(o->cursor, "0"); /* new partitions' rows may be older */
	o->catch_up = !scope_empty(o);
	o->recount = o->catch_up;
	if (!o->catch_up) {
		o->n = 0;
		owed_publish(o);
	}
}

/* PostgreSQL refused the upkeep: try again after a back-off, so an idle
 * worker does not hammer (or log) every 100 ms. */
static void owed_pg_failed(struct owed *o, const char *what, const char *err)
{
	int wait = backoff_next(&o->backoff);

	log_warn("owed invalidations: %s: %s; retrying in %d ms", what, err,
		 wait);
	o->retry_at_ms = util_mono_ms() + wait;
}

static bool owed_pg_ready(struct owed *o)
{
	char err[512];

	if (util_mono_ms() < o->retry_at_ms)
		return false;
	if (!pgsink_connect(o->ps, err, sizeof(err))) {
		owed_pg_failed(o, "connect", err);
		return false;
	}
	return true;
}

/* One DELETE of the rows in list; list is emptied when it succeeds. */
static bool delete_ids(struct owed *o, struct buf *list)
{
	char *arr, err[512];
	const char *params[1];
	long long n;

	if (list->len == 0)
		return true;
	arr = id_array(list);
	params[0] = arr;
	n = pgsink_exec(o->ps, SQL_DELETE, 1, params, "owed invalidations", err,
			sizeof(err));
	free(arr);
	if (n < 0) {
		owed_pg_failed(o, "delete", err);
		return false;
	}
	buf_reset(list);
	return true;
}

/* Redis is down: at least the count of what is owed can be right. */
static void owed_count_rows(struct owed *o)
{
	char *scope = scope_array(o), err[512];
	const char *params[3] = {pgsink_group_id(o->ps), pgsink_topic(o->ps),
				 scope};
	PGresult *res = pgsink_query(o->ps, SQL_COUNT, 3, params,
				     "owed invalidations", err, sizeof(err));

	if (!res) {
		free(scope);
		owed_pg_failed(o, "count", err);
		return;
	}
	o->n = (size_t)atoll(PQgetvalue(res, 0, 0));
	o->recount = false;
	PQclear(res);
	owed_publish(o);
	if (o->n > 0)
		log_warn("redis down: %zu invalidations owed for partitions %s",
			 o->n, scope);
	free(scope);
}

/* Performs what is owed for the partitions held, a page at a time, at
 * most max_pages (so a long outage's debts do not hold the partitions'
 * new records back; the next call goes on from the cursor): one read, the
 * page's keys in pipelined round trips (as a batch's are, made unique
 * across its batches), one delete. Stops (rows stay owed) when Redis or
 * PostgreSQL fails. */
static void owed_catch_up(struct owed *o, int max_pages)
{
	char *scope, err[512];
	const char *params[4] = {pgsink_group_id(o->ps), pgsink_topic(o->ps),
				 NULL, NULL};

	if (!owed_pg_ready(o) || !delete_ids(o, &o->done))
		return;
	if (o->cu_rows == 0)
		o->cu_t0 = util_mono_ms();
	scope = scope_array(o);
	params[2] = scope;
	for (int page = 0;; page++) {
		struct cache_keys k = {0};
		struct buf ids;
		char last[24];
		PGresult *res;
		int nr, batches;
		long long r;

		if (page == max_pages) {
			free(scope);
			return; /* more to go */
		}
		snprintf(last, sizeof(last), "%s", o->cursor);
		params[3] = o->cursor;
		res = pgsink_query(o->ps, SQL_SCAN, 4, params,
				   "owed invalidations", err, sizeof(err));
		if (!res) {
			owed_pg_failed(o, "read", err);
			free(scope);
			return;
		}
		nr = PQntuples(res);
		buf_init(&ids);
		batches = 0;
		for (int i = 0; i < nr; i++) {
			const char *id = PQgetvalue(res, i, 0);
			enum cache_op op;

			if (!cache_op_parse(PQgetvalue(res, i, 2), &op)) {
				/* A newer worker's kind of invalidation:
				 * guessed at, a generation counter could be
				 * deleted and count again from 1. */
				log_warn(
				    "owed invalidations: \"%s\" of %s is of a kind this sluice-worker does not know (\"%s\", written by a newer one); left owed until a newer worker takes the partition",
				    PQgetvalue(res, i, 1), id,
				    PQgetvalue(res, i, 2));
				PQclear(res);
				cache_keys_free(&k);
				buf_free(&ids);
				free(scope);
				return;
			}
			if (strcmp(id, last) != 0) { /* the next batch */
				list_append(&ids, id, strlen(id));
				snprintf(last, sizeof(last), "%s", id);
				batches++;
			}
			cache_keys_push(&k, PQgetvalue(res, i, 1), op);
		}
		PQclear(res);
		r = cache_invalidate(o->cache, &k);
		cache_keys_free(&k);
		if (r < 0 || !delete_ids(o, &ids)) {
			buf_free(&ids);
			free(scope);
			return; /* the page stays owed */
		}
		buf_free(&ids);
		snprintf(o->cursor, sizeof(o->cursor), "%s", last);
		o->cu_rows += (size_t)nr;
		o->cu_removed += r;
		o->n = o->n > (size_t)nr ? o->n - (size_t)nr : 0;
		owed_publish(o);
		if (batches < OWED_PAGE)
			break;
	}
	o->catch_up = false;
	strcpy(o->cursor, "0");
	o->recount = false;
	o->n = 0;
	o->mine.n = 0;
	backoff_reset(&o->backoff);
	owed_publish(o);
	if (o->cu_rows > 0)
		log_info(
		    "performed %zu owed invalidations for partitions %s in %lld ms: %lld cache keys removed",
		    o->cu_rows, scope, (long long)(util_mono_ms() - o->cu_t0),
		    o->cu_removed);
	o->cu_rows = 0;
	o->cu_removed = 0;
	free(scope);
}

void owed_after_batch(struct owed *o)
{
	if (o->catch_up && !scope_empty(o))
		owed_catch_up(o, 1);
}

void owed_idle(struct owed *o)
{
	if (o->catch_up && !scope_empty(o)) {
		if (cache_ping(o->cache)) {
			owed_catch_up(o, 10);
			return;
		}
		if (o->recount && owed_pg_ready(o))
			owed_count_rows(o);
	}
	if (o->done.len > 0 && owed_pg_ready(o) && delete_ids(o, &o->done))
		backoff_reset(&o->backoff);
}
