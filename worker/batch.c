/* One batch of records, start to end: dispatch each record to its kind's
 * handler, let the handlers look up what they need on the event_base, write
 * everything and the offsets in one transaction, then invalidate Redis. */
#include "batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/kafka.h"
#include "../common/log.h"
#include "../common/util.h"
#include "composer.h"
#include "handlers/handler.h"
#include "metrics.h"
#include "owed.h"

struct batch {
	struct batch_env *env;
	size_t n_handlers;
	void *state[MAX_KINDS]; /* per handler, in handlers[] order */
	bool used[MAX_KINDS];	/* had a record in this attempt */
	struct cache_keys keys;
	struct owed *owed;   /* the keys' durable copy until Redis confirms */
	unsigned assign_gen; /* the consumer's, when last told to owed */
	struct buf line;
	struct batch_totals t;
	/* Offsets of batches that held only other pipelines' records, not
	 * committed yet: they go with the next commit, or on their own once
	 * a second (batch_idle()), so passing over a busy topic costs no
	 * transaction per batch. Dropped when the assignment moves. */
	int32_t *dparts;
	int64_t *dnext;
	int dn, dcap;
	unsigned dgen;
	int64_t last_commit_ms;
	int64_t serve_ms; /* the consumer last served (batch_serve()) */
};

/* The batch's partitions and the next offset of each. */
struct partmap {
	int32_t *parts;
	int64_t *next;
	int64_t *fence;	 /* stored offsets read as the batch is built */
	int64_t *locked; /* the same, under the transaction's row locks */
	int n;
};

static int partmap_index(const struct partmap *pm, int32_t p)
{
	for (int i = 0; i < pm->n; i++)
		if (pm->parts[i] == p)
			return i;
	return -1;
}

char *batch_staging_sql(void)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "");
	for (int i = 0; handlers[i]; i++)
		if (handlers[i]->staging_sql)
			buf_puts(&b, handlers[i]->staging_sql);
	return b.data;
}

struct batch *batch_new(struct batch_env *env)
{
	struct batch *b = xcalloc(1, sizeof(*b));
	struct handler_env henv = {
	    .cfg = env->cfg,
	    .base = env->base,
	    .contexts = env->contexts,
	    .composer = env->composer,
	    .redis = env->redis,
	    .record_clock = env->record_clock,
	};

	b->env = env;
	for (int i = 0; i < MAX_KINDS && handlers[i]; i++) {
		b->state[i] = handlers[i]->create(&henv);
		b->n_handlers++;
	}
	b->owed = owed_new(env->ps, env->cache);
	buf_init(&b->line);
	return b;
}

void batch_destroy(struct batch *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->n_handlers; i++)
		handlers[i]->destroy(b->state[i]);
	cache_keys_free(&b->keys);
	free(b->dparts);
	free(b->dnext);
	owed_destroy(b->owed);
	buf_free(&b->line);
	free(b);
}

void batch_totals(const struct batch *b, struct batch_totals *out)
{
	*out = b->t;
	out->saved = out->skipped = 0;
	for (size_t i = 0; i < b->n_handlers; i++)
		if (handlers[i]->totals)
			handlers[i]->totals(b->state[i], &out->saved,
					    &out->skipped);
}

void batch_kind_totals(const struct batch *b,
		       void (*fn)(void *arg, const char *kind,
				  unsigned long long saved,
				  unsigned long long skipped),
		       void *arg)
{
	for (size_t i = 0; i < b->n_handlers; i++) {
		unsigned long long saved = 0, skipped = 0;

		if (!handlers[i]->totals)
			continue;
		handlers[i]->totals(b->state[i], &saved, &skipped);
		fn(arg, handlers[i]->kind, saved, skipped);
	}
}

static size_t handler_index(const char *kind)
{
	for (size_t i = 0; handlers[i]; i++)
		if (strcmp(handlers[i]->kind, kind) == 0)
			return i;
	return (size_t)-1;
}

/* Whether this pipeline applies m. */
static bool batch_owns(const struct batch *b, const rd_kafka_message_t *m)
{
	char kind[32];
	size_t h;

	kafka_header(m, HDR_KIND, kind, sizeof(kind));
	h = handler_index(kind);
	if (h == (size_t)-1)
		return b->env->owns_unknown;
	return !b->env->kinds || (b->env->kinds >> h & 1u);
}

static int cmp_key(const void *a, const void *b)
{
	const rd_kafka_message_t *x = *(rd_kafka_message_t *const *)a;
	const rd_kafka_message_t *y = *(rd_kafka_message_t *const *)b;
	size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
	int c = n ? memcmp(x->key, y->key, n) : 0;

	return c ? c : (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* Whether the batch streams: every record goes to a handler that can
 * (it has no lookups, so nothing is waited for with the transaction
 * open) and no two records share a key (a conversation sent twice
 * repeats its rows, which the handlers' direct COPY would refuse). Such a
 * batch opens its transaction before its records are decoded, and each
 * handler sends its rows on while the next ones are built: decoding and
 * the database's work overlap instead of adding up. */
static bool batch_streams(const struct batch *b, rd_kafka_message_t **msgs,
			  size_t n)
{
	rd_kafka_message_t **v;
	size_t first = (size_t)-1, nv = 0;
	bool ok = true;

	v = xmalloc((n + 1) * sizeof(*v));
	/* One kind: a handler's stream holds the connection until its
	 * write. Other pipelines' records are only passed over. */
	for (size_t i = 0; i < n && ok; i++) {
		char kind[32];
		size_t h;

		if (!batch_owns(b, msgs[i]))
			continue;
		kafka_header(msgs[i], HDR_KIND, kind, sizeof(kind));
		h = handler_index(kind);
		if (nv == 0)
			first = h;
		ok = h != (size_t)-1 && h == first && handlers[h]->stream &&
		     !handlers[h]->prepare && msgs[i]->key_len > 0;
		v[nv++] = msgs[i];
	}
	if (nv == 0)
		ok = false; /* nothing to stream */
	if (ok && nv >= 2) {
		qsort(v, nv, sizeof(*v), cmp_key);
		for (size_t i = 1; i < nv && ok; i++)
			ok = cmp_key(&v[i - 1], &v[i]) != 0;
	}
	free(v);
	return ok;
}

/* A batch that runs long serves its consumer once a second, so that
 * librdkafka does not take it for a stuck worker and give its partitions
 * away (kafka.max.poll.interval.ms); a short batch never does. */
static void batch_serve(struct batch *b)
{
	int64_t now = util_mono_ms();

	if (!b->env->serve || now - b->serve_ms < 1000)
		return;
	b->serve_ms = now;
	b->env->serve(b->env->serve_arg);
}

/* Runs the event_base until every handler's lookups (and compositions)
 * are in. false: a handler could not start (err), or a stop request came
 * first: the batch is left uncommitted for its next owner. */
static bool batch_prepare(struct batch *b, char *err, size_t errsz)
{
	const struct worker_config *cfg = b->env->cfg;
	int64_t deadline;
	bool waiting = false, gave_up = false;

	for (size_t i = 0; i < b->n_handlers; i++)
		if (b->used[i] && handlers[i]->prepare) {
			if (!handlers[i]->prepare(b->state[i], b->env->ps, err,
						  errsz))
				return false;
			waiting = true;
		}
	/* Every lookup ends by its own timeout, so this only guards against
	 * one that never reports: the partition is not held forever. The
	 * bound is what the slowest allowed source could take for this
	 * batch's leads, K at a time, twice over. */
	{
		int64_t waves =
		    (int64_t)contexts_stats(b->env->contexts)->leads /
			cfg->lc_concurrency +
		    1;

		deadline =
		    util_mono_ms() + 10000 + cfg->lc_lease_wait_ms +
		    2 * waves * cfg->lc_timeout_ms * (cfg->lc_retries + 1);
	}
	while (waiting) {
		waiting = false;
		for (size_t i = 0; i < b->n_handlers && !waiting; i++)
			if (b->used[i] && handlers[i]->prepared &&
			    !handlers[i]->prepared(b->state[i]))
				waiting = true;
		if (waiting && *b->env->stopping && b->env->composer &&
		    !composer_done(b->env->composer)) {
			/* Compositions can take minutes: a stop request
			 * does not wait for them (lookups, bounded by their
			 * budget, it does). Nothing of the batch is written;
			 * its next owner composes it again. */
			if (b->env->composer)
				composer_stop(b->env->composer);
			contexts_give_up(b->env->contexts);
			snprintf(err, errsz,
				 "stopping while the batch's "
				 "lookups or compositions ran");
			return false;
		}
		if (waiting && !gave_up && util_mono_ms() > deadline) {
			log_error(
			    "lookups still running after their deadline; the leads left fail as context_unavailable");
			contexts_give_up(b->env->contexts);
			gave_up = true;
		} else if (waiting) {
			event_base_loop(b->env->base, EVLOOP_ONCE);
			batch_serve(b);
		}
	}
	return true;
}

/* Builds and writes one attempt at the batch. false = transient failure
 * (nothing committed); the caller retries.
 *
 * The transaction opens only once the rows are built and the lookups are
 * in: it holds the partitions' offset rows locked, and a worker that
 * stalls while holding them (stopped, partitioned away) would block their
 * next owner. The fence read before it is checked again under the locks;
 * if another owner committed in between, the batch is built again. A
 * batch that streams (no lookups) opens it first and reads the fence
 * under the locks once; between its chunks of rows the session is idle
 * in the transaction, so the server's idle timeout still ends it if the
 * worker stalls. A record to dead-letter stops the stream: the batch is
 * built again the usual way, so the dead-letter topic's confirmation is
 * never awaited with the transaction open. */
static bool batch_attempt(struct batch *b, rd_kafka_message_t **msgs, size_t n,
			  bool *stream, struct partmap *pm, size_t *dead,
			  size_t dead_by[MD_COUNT], size_t *fenced,
			  size_t *passed, int64_t *prepare_ms, char *err,
			  size_t errsz)
{
	struct batch_env *env = b->env;
	size_t dlq_count;
	int64_t t;

again:
	dlq_count = 0;
	*dead = *fenced = *passed = 0;
	memset(dead_by, 0, MD_COUNT * sizeof(*dead_by));
	for (size_t i = 0; i < b->n_handlers; i++) {
		handlers[i]->reset(b->state[i]);
		b->used[i] = false;
	}
	if (*stream ? !pgsink_begin(env->ps, pm->parts, pm->n, pm->fence, err,
				    errsz)
		    : !pgsink_load_offsets(env->ps, pm->parts, pm->n, pm->fence,
					   err, errsz))
		return false;
	for (size_t i = 0; i < n; i++) {
		rd_kafka_message_t *m = msgs[i];
		int pi = partmap_index(pm, m->partition);
		char kind[32], source[128], received[32], campaign[300];
		char sender[80];
		char reason[300];
		size_t h;
		enum metrics_dead why = MD_INVALID; /* a handler's refusal */
		struct record rec;

		if (pm->fence[pi] >= 0 && m->offset < pm->fence[pi]) {
			(*fenced)++; /* applied by an earlier owner */
			continue;
		}
		if (!batch_owns(b, m)) {
			(*passed)++; /* another pipeline's */
			continue;
		}
		kafka_header(m, HDR_KIND, kind, sizeof(kind));
		kafka_header(m, HDR_SOURCE, source, sizeof(source));
		kafka_header(m, HDR_RECEIVED_AT, received, sizeof(received));
		kafka_header(m, HDR_CAMPAIGN_ID, campaign, sizeof(campaign));
		kafka_header(m, HDR_CHAT_SENDER, sender, sizeof(sender));
		rec.value = m->payload;
		rec.len = m->len;
		rec.source = source[0] ? source : "unknown";
		rec.campaign_id = campaign;
		rec.sender = sender;
		rec.received_ms = received[0] ? atoll(received) : 0;
		if (rec.received_ms <= 0)
			rec.received_ms = rd_kafka_message_timestamp(m, NULL);
		rec.seq = (int64_t)i;
		h = handler_index(kind);
		if (h == (size_t)-1) {
			why = MD_UNKNOWN_KIND;
			snprintf(reason, sizeof(reason),
				 "unknown kind \"%s\" (header %s)", kind,
				 HDR_KIND);
		} else if (!m->payload || m->len == 0) {
			why = MD_EMPTY;
			snprintf(reason, sizeof(reason), "empty record");
		} else if (handlers[h]->add(b->state[h], &rec, reason,
					    sizeof(reason))) {
			b->used[h] = true;
			if (*stream && !handlers[h]->stream(
					   b->state[h], env->ps, err, errsz))
				goto fail;
			continue;
		}
		if (*stream) {
			pgsink_rollback(env->ps);
			*stream = false;
			goto again;
		}
		if (env->dry_run) {
			log_ctx_info(kind, "dry run: would dead-letter: %s",
				     reason);
		} else if (!dlq_send(env->dlq, m, reason)) {
			snprintf(err, errsz,
				 "dead-letter topic refused a record");
			goto fail;
		}
		dlq_count++;
		dead_by[why]++;
	}
	if (dlq_count > 0 && !dlq_flush(env->dlq, 10000)) {
		snprintf(err, errsz, "dead-letter topic did not confirm");
		goto fail;
	}
	*dead = dlq_count;
	t = util_mono_ms();
	if (!batch_prepare(b, err, errsz)) {
		*prepare_ms += util_mono_ms() - t;
		return false;
	}
	*prepare_ms += util_mono_ms() - t;
	if (!*stream &&
	    !pgsink_begin(env->ps, pm->parts, pm->n, pm->locked, err, errsz))
		return false;
	for (int i = 0; i < pm->n && !*stream; i++)
		if (pm->locked[i] != pm->fence[i]) {
			snprintf(err, errsz,
				 "the stored offset of partition %d moved from "
				 "%lld to %lld while the batch was built "
				 "(another owner committed); building it again",
				 (int)pm->parts[i], (long long)pm->fence[i],
				 (long long)pm->locked[i]);
			pgsink_rollback(env->ps);
			return false;
		}
	/* The keys depend only on what the handlers took and looked up, so
	 * they are known before the commit and go into the outbox with it: a
	 * worker that dies before Redis confirms leaves them to the next
	 * owner. They are built before the writes: a streaming batch's
	 * server is still writing an earlier chunk then, where after the
	 * writes it would wait for them (about 1.5 ms a batch of 2,000
	 * transcripts). */
	cache_keys_clear(&b->keys);
	for (size_t i = 0; i < b->n_handlers; i++)
		if (b->used[i] && handlers[i]->keys)
			handlers[i]->keys(b->state[i], &b->keys);
	cache_keys_unique(&b->keys);
	for (size_t i = 0; i < b->n_handlers; i++)
		if (b->used[i] && handlers[i]->write &&
		    !handlers[i]->write(b->state[i], env->ps, err, errsz)) {
			pgsink_rollback(env->ps);
			return false;
		}
	if (!env->dry_run && !env->no_invalidate &&
	    !owed_write(b->owed, pm->parts, pm->n, &b->keys, err, errsz)) {
		pgsink_rollback(env->ps);
		return false;
	}
	return pgsink_commit(env->ps, pm->parts, pm->next, pm->n, err, errsz);
fail:
	if (*stream)
		pgsink_rollback(env->ps);
	return false;
}

static void batch_defer_check(struct batch *b);

/* Tells owed the partitions held when the consumer's assignment moved
 * (none once the consumer is gone). */
static void batch_sync_assignment(struct batch *b)
{
	int32_t *parts = NULL;
	int n = 0;

	if (b->env->consumer) {
		unsigned gen = consume_assign_gen(b->env->consumer);

		if (gen == b->assign_gen)
			return;
		b->assign_gen = gen;
		n = consume_assignment(b->env->consumer, &parts);
	} else if (b->assign_gen == (unsigned)-1) {
		return;
	} else {
		b->assign_gen = (unsigned)-1;
	}
	owed_assign(b->owed, parts, n);
	free(parts);
}

void batch_hold(struct batch *b, const int32_t *parts, int n)
{
	b->assign_gen = (unsigned)-1; /* batch_sync_assignment: no consumer */
	owed_assign(b->owed, parts, n);
}

void batch_idle(struct batch *b)
{
	batch_defer_check(b);
	/* Passed-over records' offsets, at most a second late. */
	if (b->dn > 0 && util_mono_ms() - b->last_commit_ms >= 1000)
		batch_process(b, NULL, 0);
	batch_sync_assignment(b);
	owed_idle(b->owed);
}

/* Waits on the event_base (lookups and Redis keep being served), in
 * slices so a stop request is seen within 100 ms. */
void batch_wait(void *arg, int ms)
{
	struct batch *b = arg;

	int64_t until = util_mono_ms() + ms;

	while (!*b->env->stopping) {
		int64_t left = until - util_mono_ms();
		struct timeval tv;

		if (left <= 0)
			break;
		if (left > 100)
			left = 100;
		tv = util_ms_tv(left);
		event_base_loopexit(b->env->base, &tv);
		event_base_dispatch(b->env->base);
		batch_serve(b);
	}
}

/* One attempt at msgs[0..n) that is rolled back whatever happens, with
 * nothing dead-lettered: 0 = it would commit, 1 = refused for its data,
 * -1 = another failure (the database went away...). */
static int batch_probe(struct batch *b, rd_kafka_message_t **msgs, size_t n,
		       struct partmap *pm)
{
	struct batch_env *env = b->env;
	size_t dead, dead_by[MD_COUNT], fenced, passed;
	int64_t prepare_ms = 0;
	bool stream = false, ok;
	char err[1024];

	env->dry_run = true;
	pgsink_set_dry_run(env->ps, true);
	pgsink_clear_error(env->ps);
	ok = batch_attempt(b, msgs, n, &stream, pm, &dead, dead_by, &fenced,
			   &passed, &prepare_ms, err, sizeof(err));
	env->dry_run = false;
	pgsink_set_dry_run(env->ps, false);
	if (ok)
		return 0;
	return pgsink_data_error(env->ps) ? 1 : -1;
}

/* The batch was refused for its data (a value PostgreSQL cannot store, a
 * constraint), which no retry fixes. The record to blame is found by
 * bisection over prefixes of the pipeline's records, each tried and
 * rolled back: the shortest prefix refused ends with it (so a record
 * refused only beside an earlier one is the one blamed). It goes to the
 * dead-letter topic with the error and is left out of the batch, whose
 * offsets still cover it. false = nothing isolated (another failure came
 * up meanwhile): the batch is retried as usual. */
static bool batch_isolate(struct batch *b, rd_kafka_message_t **live, size_t *n,
			  struct partmap *pm, const char *error, size_t *dead)
{
	struct batch_env *env = b->env;
	rd_kafka_message_t **own = xmalloc((*n + 1) * sizeof(*own));
	size_t k = 0, lo = 0, hi, bad;
	char reason[1100];
	int r;

	for (size_t i = 0; i < *n; i++)
		if (batch_owns(b, live[i]))
			own[k++] = live[i];
	hi = k; /* own[0..lo) is accepted, own[0..hi) refused */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		r = batch_probe(b, own, mid, pm);
		if (r < 0)
			break;
		if (r == 1)
			hi = mid;
		else
			lo = mid;
	}
	if (hi == 0 || hi - lo != 1 || batch_probe(b, own, hi, pm) != 1) {
		free(own);
		return false;
	}
	bad = hi - 1;
	snprintf(reason, sizeof(reason), "refused by PostgreSQL: %s", error);
	log_warn(
	    "record %s [%d] @%lld: %s; dead-lettered, the rest of the batch goes on",
	    rd_kafka_topic_name(own[bad]->rkt), (int)own[bad]->partition,
	    (long long)own[bad]->offset, reason);
	if (!dlq_send(env->dlq, own[bad], reason) ||
	    !dlq_flush(env->dlq, 10000)) {
		free(own);
		return false;
	}
	for (size_t i = 0; i < *n; i++)
		if (live[i] == own[bad]) {
			memmove(&live[i], &live[i + 1],
				(*n - i - 1) * sizeof(*live));
			(*n)--;
			break;
		}
	(*dead)++;
	free(own);
	return true;
}

/* Adds the offsets of a batch that had nothing for this pipeline to the
 * ones waiting for a commit. */
static void batch_defer(struct batch *b, const struct partmap *pm)
{
	for (int i = 0; i < pm->n; i++) {
		int j;

		for (j = 0; j < b->dn; j++)
			if (b->dparts[j] == pm->parts[i])
				break;
		if (j == b->dn) {
			if (b->dn == b->dcap) {
				b->dcap = b->dcap ? b->dcap * 2 : 8;
				b->dparts =
				    xrealloc(b->dparts, (size_t)b->dcap *
							    sizeof(*b->dparts));
				b->dnext =
				    xrealloc(b->dnext, (size_t)b->dcap *
							   sizeof(*b->dnext));
			}
			b->dparts[j] = pm->parts[i];
			b->dnext[j] = pm->next[i];
			b->dn++;
		} else if (pm->next[i] > b->dnext[j]) {
			b->dnext[j] = pm->next[i];
		}
	}
}

/* The assignment moved since the offsets were put aside: the next owner
 * passes over those records again, harmlessly, so they are dropped. */
static void batch_defer_check(struct batch *b)
{
	unsigned gen =
	    b->env->consumer ? consume_assign_gen(b->env->consumer) : 0;

	if (gen != b->dgen)
		b->dn = 0;
	b->dgen = gen;
}

void batch_process(void *arg, rd_kafka_message_t **msgs, size_t n)
{
	struct batch *b = arg;
	struct batch_env *env = b->env;
	struct partmap pm = {.n = 0};
	struct backoff backoff;
	int wait;
	size_t dead = 0, fenced = 0, passed = 0, own = 0, isolated = 0;
	size_t dead_by[MD_COUNT] = {0};
	size_t n_live = 0;
	rd_kafka_message_t **live = NULL;
	int64_t t0 = util_mono_ms(), prepare_ms = 0, t_commit, t_end;
	long long removed;
	bool stream;
	char err[1024];

	batch_defer_check(b);
	b->serve_ms = t0;
	pm.parts = xcalloc(n + (size_t)b->dn + 1, sizeof(*pm.parts));
	pm.next = xcalloc(n + (size_t)b->dn + 1, sizeof(*pm.next));
	pm.fence = xcalloc(n + (size_t)b->dn + 1, sizeof(*pm.fence));
	pm.locked = xcalloc(n + (size_t)b->dn + 1, sizeof(*pm.locked));
	for (size_t i = 0; i < n; i++) {
		int pi = partmap_index(&pm, msgs[i]->partition);

		if (pi < 0) {
			pi = pm.n++;
			pm.parts[pi] = msgs[i]->partition;
			pm.next[pi] = 0;
		}
		if (msgs[i]->offset + 1 > pm.next[pi])
			pm.next[pi] = msgs[i]->offset + 1;
		own += batch_owns(b, msgs[i]);
	}
	if (own == 0 && n > 0 && t0 - b->last_commit_ms < 1000) {
		/* Only other pipelines' records: their offsets wait for
		 * the next commit. */
		batch_defer(b, &pm);
		b->t.passed += n;
		goto done;
	}
	for (int j = 0; j < b->dn; j++) {
		int pi = partmap_index(&pm, b->dparts[j]);

		if (pi < 0) {
			pi = pm.n++;
			pm.parts[pi] = b->dparts[j];
			pm.next[pi] = 0;
		}
		if (b->dnext[j] > pm.next[pi])
			pm.next[pi] = b->dnext[j];
	}
	contexts_reset(env->contexts);
	if (env->composer)
		composer_reset(env->composer);
	/* The records the attempts see: all of them, less those a data
	 * error was traced to (their offsets stay in pm). */
	live = xmalloc((n + 1) * sizeof(*live));
	if (n)
		memcpy(live, msgs, n * sizeof(*live));
	n_live = n;
	stream = batch_streams(b, live, n_live);
	backoff_init(&backoff, env->cfg->retry_backoff_min_ms,
		     env->cfg->retry_backoff_max_ms);
	for (;;) {
		pgsink_clear_error(env->ps);
		if (batch_attempt(b, live, n_live, &stream, &pm, &dead, dead_by,
				  &fenced, &passed, &prepare_ms, err,
				  sizeof(err)))
			break;
		if (pgsink_data_error(env->ps) && !env->dry_run &&
		    batch_isolate(b, live, &n_live, &pm, err, &isolated)) {
			stream = false;
			continue;
		}
		wait = backoff_next(&backoff);
		log_warn(
		    "batch of %zu records not committed: %s; retrying in %d ms",
		    own, err, wait);
		if (*env->stopping) {
			log_warn(
			    "stopping: the batch stays uncommitted and will be consumed again");
			goto done;
		}
		metrics_retry();
		batch_wait(b, wait);
		batch_defer_check(b); /* a rebalance while waiting */
	}
	b->dn = 0;
	b->last_commit_ms = util_mono_ms();
	b->t.passed += passed;
	dead += isolated;
	/* Counted once the batch that sent them commits, as dead is. */
	dead_by[MD_REFUSED_BY_POSTGRES] += isolated;
	for (int i = 0; i < MD_COUNT; i++)
		b->t.dead_by[i] += dead_by[i];
	if (own == 0) {
		/* Offsets only: nothing to log, count or invalidate. */
		b->t.dead += dead;
		if (env->consumer)
			consume_commit_async(env->consumer, pm.parts, pm.next,
					     pm.n);
		metrics_committed(pm.parts, pm.next, pm.n);
		goto done;
	}
	t_commit = util_mono_ms();
	if (env->consumer)
		consume_commit_async(env->consumer, pm.parts, pm.next, pm.n);

	/* Right after the commit: every key the handlers named, in one
	 * pipeline; confirmed, their outbox rows go with the next commit.
	 * A dry run committed nothing, so it owes nothing. */
	removed = env->dry_run || env->no_invalidate
		      ? 0
		      : cache_invalidate(env->cache, &b->keys);
	if (!env->dry_run && !env->no_invalidate)
		owed_committed(b->owed, removed >= 0);
	t_end = util_mono_ms();

	buf_reset(&b->line);
	buf_puts(&b->line, "");
	for (size_t i = 0; i < b->n_handlers; i++) {
		size_t before = b->line.len;

		if (!handlers[i]->summary)
			continue;
		if (before > 0)
			buf_puts(&b->line, "; ");
		handlers[i]->summary(b->state[i], &b->line);
		if (b->line.len == before + 2 && before > 0) {
			b->line.len = before; /* it had nothing to say */
			b->line.data[before] = '\0';
		}
	}
	b->t.batches++;
	b->t.records += own;
	b->t.dead += dead;
	metrics_committed(pm.parts, pm.next, pm.n);
	metrics_batch(own, t_end - t0, contexts_stats(env->contexts));
	log_at(
	    env->quiet ? LOG_DEBUG : LOG_INFO, NULL,
	    "%sbatch of %zu records in %lld ms (lookups %lld ms, database %lld ms, cache %lld ms): %s%s%zu dead-lettered, %zu already applied, %s%lld cache keys removed",
	    env->dry_run ? "dry run (rolled back): " : "", own,
	    (long long)(t_end - t0), (long long)prepare_ms,
	    (long long)(t_commit - t0 - prepare_ms),
	    (long long)(t_end - t_commit), b->line.data,
	    b->line.len ? "; " : "", dead, fenced,
	    removed < 0 ? "redis down: " : "", removed < 0 ? 0 : removed);
	/* Redis answers again, or partitions came with an earlier owner's
	 * debts: perform what is owed (only then; nothing on the usual
	 * path). */
	batch_sync_assignment(b);
	if (removed >= 0 && !env->dry_run && !env->no_invalidate)
		owed_after_batch(b->owed);
	/* Let what the batch queued on the loop (cache fills) go out. */
	event_base_loop(env->base, EVLOOP_NONBLOCK);
done:
	free(live);
	free(pm.parts);
	free(pm.next);
	free(pm.fence);
	free(pm.locked);
}
