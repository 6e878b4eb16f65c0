/* Mode "replay": re-applies a range of the topic for a backfill.
 *
 * The range is fixed when the replay starts: from --from (a time, looked
 * up with offsets_for_times, or explicit offsets) to --to (the same) or the
 * high watermarks of that moment, so a replay ends even while the live
 * pipeline keeps writing. The partitions are assigned, not subscribed: the
 * replay's group (its own, never the live one) only names the rows of
 * sluice_offsets that fence its batches, so a replay that was stopped
 * resumes where it stopped when run again with the same group, and its
 * batches go through batch_process() exactly as the consumer's do. */
#include "replay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/kafka.h"
#include "../common/log.h"
#include "../common/util.h"

/* One partition of the range. */
struct rpart {
	int32_t id;
	int64_t start, end, pos; /* [start, end); pos = next to apply */
	bool done;
};

struct replay {
	struct batch_env *env;
	struct batch *b;
	const struct replay_opts *o;
	rd_kafka_t *rk;
	struct rpart *parts;
	struct kafka_part *kp; /* parts[i] is kp[i] */
	int n;
	rd_kafka_message_t **msgs;
	size_t cap;
	int64_t total, applied, t0, last_progress;
	bool tty;
	bool refused; /* the range does not fit the topic: exit 2 */
	char errstr[512];
};

static struct rpart *rpart_find(struct replay *r, int32_t id)
{
	for (int i = 0; i < r->n; i++)
		if (r->parts[i].id == id)
			return &r->parts[i];
	return NULL;
}

static int pos_index(const struct replay_pos *p, int32_t part)
{
	for (int i = 0; i < p->n; i++)
		if (p->part[i] == part)
			return i;
	return -1;
}

/* The topic's partitions and their watermarks. */
static bool list_partitions(struct replay *r)
{
	const char *topic = r->env->cfg->topic;

	r->n = kafka_side_map(r->rk, topic, -1, &r->kp, r->errstr,
			      sizeof(r->errstr));
	if (r->n == 0)
		snprintf(r->errstr, sizeof(r->errstr),
			 "topic %s: not found or without partitions", topic);
	if (r->n <= 0) {
		r->n = 0;
		return false;
	}
	r->parts = xcalloc((size_t)r->n, sizeof(*r->parts));
	for (int i = 0; i < r->n; i++)
		r->parts[i].id = r->kp[i].id;
	return true;
}

/* Offsets of the first records at or after time_ms, per partition; the
 * high watermark where there is none. */
static bool offsets_at(struct replay *r, int64_t time_ms, const int64_t *hi,
		       int64_t *out)
{
	rd_kafka_topic_partition_list_t *l =
	    rd_kafka_topic_partition_list_new(r->n);
	rd_kafka_resp_err_t err;

	for (int i = 0; i < r->n; i++)
		rd_kafka_topic_partition_list_add(l, r->env->cfg->topic,
						  r->parts[i].id)
		    ->offset = time_ms;
	err = rd_kafka_offsets_for_times(r->rk, l, 10000);
	if (err) {
		snprintf(r->errstr, sizeof(r->errstr), "offsets_for_times: %s",
			 rd_kafka_err2str(err));
		rd_kafka_topic_partition_list_destroy(l);
		return false;
	}
	for (int i = 0; i < l->cnt; i++) {
		struct rpart *p = rpart_find(r, l->elems[i].partition);
		int idx = p ? (int)(p - r->parts) : -1;

		if (idx < 0)
			continue;
		if (l->elems[i].err) {
			snprintf(r->errstr, sizeof(r->errstr),
				 "offsets_for_times [%d]: %s",
				 (int)l->elems[i].partition,
				 rd_kafka_err2str(l->elems[i].err));
			rd_kafka_topic_partition_list_destroy(l);
			return false;
		}
		out[idx] =
		    l->elems[i].offset < 0 ? hi[idx] : l->elems[i].offset;
	}
	rd_kafka_topic_partition_list_destroy(l);
	return true;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* Fixes [start, end) of every partition. */
static bool plan(struct replay *r)
{
	const struct replay_opts *o = r->o;
	int64_t *lo = xcalloc((size_t)r->n, sizeof(*lo));
	int64_t *hi = xcalloc((size_t)r->n, sizeof(*hi));
	int64_t *at = xcalloc((size_t)r->n, sizeof(*at));
	bool ok = false;

	for (int i = 0; i < r->n; i++) {
		lo[i] = r->kp[i].lo;
		hi[i] = r->kp[i].hi;
	}
	/* A range naming what the topic does not have, or running backwards,
	 * is refused (exit 2) before anything is read. */
	for (int i = 0; i < o->from.n; i++)
		if (!rpart_find(r, o->from.part[i])) {
			snprintf(r->errstr, sizeof(r->errstr),
				 "--from names partition %d; %s has %d",
				 (int)o->from.part[i], r->env->cfg->topic,
				 r->n);
			r->refused = true;
			goto out;
		}
	for (int i = 0; i < o->to.n; i++)
		if (!rpart_find(r, o->to.part[i])) {
			snprintf(r->errstr, sizeof(r->errstr),
				 "--to names partition %d; %s has %d",
				 (int)o->to.part[i], r->env->cfg->topic, r->n);
			r->refused = true;
			goto out;
		}
	/* start */
	if (o->from.is_time) {
		if (!offsets_at(r, o->from.time_ms, hi, at))
			goto out;
		for (int i = 0; i < r->n; i++)
			r->parts[i].start = at[i];
	} else {
		for (int i = 0; i < r->n; i++) {
			int k = pos_index(&o->from, r->parts[i].id);

			/* partitions --from does not name are not replayed */
			r->parts[i].start =
			    k < 0 ? hi[i]
				  : clamp64(o->from.offset[k], lo[i], hi[i]);
		}
	}
	/* end */
	for (int i = 0; i < r->n; i++)
		r->parts[i].end = hi[i];
	if (o->has_to && o->to.is_time) {
		if (!offsets_at(r, o->to.time_ms, hi, at))
			goto out;
		for (int i = 0; i < r->n; i++)
			r->parts[i].end = at[i];
	} else if (o->has_to) {
		for (int i = 0; i < r->n; i++) {
			int k = pos_index(&o->to, r->parts[i].id);

			if (k >= 0)
				r->parts[i].end =
				    clamp64(o->to.offset[k], lo[i], hi[i]);
		}
	}
	for (int i = 0; i < r->n; i++) {
		struct rpart *p = &r->parts[i];

		if (p->start < lo[i])
			p->start = lo[i];
		/* partitions --from's offsets do not name are not replayed,
		 * whatever a --to time says of them */
		if (!o->from.is_time && pos_index(&o->from, p->id) < 0)
			p->end = p->start;
		if (p->end < p->start) {
			snprintf(r->errstr, sizeof(r->errstr),
				 "--to is before --from on partition %d "
				 "(offset %lld before %lld)",
				 (int)p->id, (long long)p->end,
				 (long long)p->start);
			r->refused = true;
			goto out;
		}
	}
	ok = true;
out:
	free(lo);
	free(hi);
	free(at);
	return ok;
}

/* A replay run again with the same group resumes where it stopped: what
 * its group already applied is not read again. */
static bool resume_from_stored(struct replay *r)
{
	int32_t *ids = xcalloc((size_t)r->n, sizeof(*ids));
	int64_t *stored = xcalloc((size_t)r->n, sizeof(*stored));
	struct backoff backoff;
	char err[512];

	for (int i = 0; i < r->n; i++)
		ids[i] = r->parts[i].id;
	backoff_init(&backoff, r->env->cfg->retry_backoff_min_ms,
		     r->env->cfg->retry_backoff_max_ms);
	while (!pgsink_load_offsets(r->env->ps, ids, r->n, stored, err,
				    sizeof(err))) {
		int wait;

		if (*r->env->stopping) {
			free(ids);
			free(stored);
			snprintf(r->errstr, sizeof(r->errstr),
				 "stopped before the stored offsets were "
				 "read");
			return false;
		}
		wait = backoff_next(&backoff);
		log_warn("reading stored offsets: %s; retrying in %d ms", err,
			 wait);
		batch_wait(r->b, wait);
	}
	/* What an earlier run of this group still owes Redis is performed
	 * like a consumer's debts on its partitions. */
	if (!r->o->dry_run && !r->env->no_invalidate)
		batch_hold(r->b, ids, r->n);
	for (int i = 0; i < r->n; i++) {
		struct rpart *p = &r->parts[i];

		/* A dry run starts where the real run would, so the two
		 * agree on what is left to apply. */
		if (stored[i] > p->start && p->start < p->end) {
			log_info(
			    "[%d]: group %s already applied up to %lld; %s there",
			    (int)p->id, r->env->cfg->group_id,
			    (long long)stored[i],
			    r->o->dry_run ? "a real run would resume"
					  : "resuming");
			p->start = stored[i] < p->end ? stored[i] : p->end;
		}
		p->pos = p->start;
		p->done = p->start >= p->end;
		r->total += p->end - p->start;
	}
	free(ids);
	free(stored);
	return true;
}

static bool assign(struct replay *r)
{
	for (int i = 0; i < r->n; i++) {
		struct rpart *p = &r->parts[i];

		log_info("replay [%d]: offsets %lld to %lld (%lld records)",
			 (int)p->id, (long long)p->start, (long long)p->end,
			 (long long)(p->end - p->start));
		r->kp[i].start = p->start;
		r->kp[i].skip = p->done;
	}
	return kafka_side_assign(r->rk, r->env->cfg->topic, r->kp, r->n,
				 r->errstr, sizeof(r->errstr));
}

static int64_t remaining(const struct replay *r)
{
	int64_t left = 0;

	for (int i = 0; i < r->n; i++)
		if (!r->parts[i].done)
			left += r->parts[i].end - r->parts[i].pos;
	return left;
}

static bool all_done(const struct replay *r)
{
	for (int i = 0; i < r->n; i++)
		if (!r->parts[i].done)
			return false;
	return true;
}

static void finish_partition(struct replay *r, struct rpart *p)
{
	rd_kafka_topic_partition_list_t *l;

	if (p->done)
		return;
	p->done = true;
	/* Stop fetching past the range. */
	l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, r->env->cfg->topic, p->id);
	rd_kafka_pause_partitions(r->rk, l);
	rd_kafka_topic_partition_list_destroy(l);
}

/* Records done, rate, what is left and when it should end: redrawn in
 * place on a terminal, a plain line every few seconds otherwise. */
static void progress(struct replay *r, bool final)
{
	int64_t now = util_mono_ms(), left = remaining(r);
	double secs = (double)(now - r->t0) / 1000.0;
	double rate = secs > 0 ? (double)r->applied / secs : 0;
	char eta[32];

	if (!final && now - r->last_progress < (r->tty ? 200 : 5000))
		return;
	r->last_progress = now;
	if (rate > 0 && left > 0)
		snprintf(eta, sizeof(eta), "%.0f s", (double)left / rate);
	else
		snprintf(eta, sizeof(eta), left ? "unknown" : "0 s");
	fprintf(stderr,
		"%sreplay: %lld/%lld records (%.1f%%), %.0f records/s, "
		"%lld left, ETA %s%s",
		r->tty ? "\r\033[K" : "", (long long)r->applied,
		(long long)r->total,
		r->total ? 100.0 * (double)r->applied / (double)r->total
			 : 100.0,
		rate, (long long)left, eta, r->tty && !final ? "" : "\n");
	fflush(stderr);
}

/* Takes one polled message: true if it belongs to the batch. */
static bool take(struct replay *r, rd_kafka_message_t *m)
{
	struct rpart *p = rpart_find(r, m->partition);

	if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
		/* Caught up with the broker: the range's end (taken at
		 * start, never past the high watermark) is reached even if
		 * the offsets before it had gaps. */
		if (p && m->offset >= p->end)
			finish_partition(r, p);
		rd_kafka_message_destroy(m);
		return false;
	}
	if (m->err) {
		log_warn("replay: %s", rd_kafka_message_errstr(m));
		rd_kafka_message_destroy(m);
		return false;
	}
	if (!p || p->done || m->offset >= p->end) {
		if (p)
			finish_partition(r, p);
		rd_kafka_message_destroy(m);
		return false;
	}
	return true;
}

/* A batch: what is already fetched, up to batch_max (and no more than a
 * quarter second's worth under --rate). */
static size_t collect(struct replay *r)
{
	size_t max = r->cap, n = 0;
	int64_t deadline;
	rd_kafka_message_t *m;

	if (r->o->rate > 0 && r->o->rate / 4 < (double)max)
		max = r->o->rate / 4 < 1 ? 1 : (size_t)(r->o->rate / 4);
	m = rd_kafka_consumer_poll(r->rk, 200);
	if (!m)
		return 0;
	if (take(r, m))
		r->msgs[n++] = m;
	deadline = util_mono_ms() + r->env->cfg->batch_wait_ms;
	while (n < max) {
		int64_t left = deadline - util_mono_ms();

		m = rd_kafka_consumer_poll(r->rk, left > 0 ? (int)left : 0);
		if (!m)
			break;
		if (take(r, m))
			r->msgs[n++] = m;
	}
	return n;
}

static void apply(struct replay *r, size_t n)
{
	batch_process(r->b, r->msgs, n);
	for (size_t i = 0; i < n; i++) {
		struct rpart *p = rpart_find(r, r->msgs[i]->partition);

		if (r->msgs[i]->offset + 1 > p->pos)
			p->pos = r->msgs[i]->offset + 1;
		rd_kafka_message_destroy(r->msgs[i]);
	}
	r->applied += (int64_t)n;
	for (int i = 0; i < r->n; i++)
		if (!r->parts[i].done && r->parts[i].pos >= r->parts[i].end)
			finish_partition(r, &r->parts[i]);
}

/* --rate: wait (serving the loop) until the average is back under it. */
static void pace(struct replay *r)
{
	int64_t due;

	if (r->o->rate <= 0)
		return;
	due = r->t0 + (int64_t)((double)r->applied * 1000.0 / r->o->rate);
	if (due > util_mono_ms())
		batch_wait(r->b, (int)(due - util_mono_ms()));
}

static void kafka_settings(struct replay *r, const char **kv)
{
	kv[0] = "group.id";
	kv[1] = r->env->cfg->group_id;
	kv[2] = "enable.auto.commit";
	kv[3] = "false";
	kv[4] = "enable.auto.offset.store";
	kv[5] = "false";
	kv[6] = "enable.partition.eof";
	kv[7] = "true";
	kv[8] = "auto.offset.reset";
	kv[9] = "earliest";
	kv[10] = NULL;
}

/* "transcript 27 saved 27 skipped, campaign 11 saved 0 skipped" */
static void kind_line(void *arg, const char *kind, unsigned long long saved,
		      unsigned long long skipped)
{
	struct buf *line = arg;

	buf_printf(line, "%s%s %llu saved %llu skipped", line->len ? ", " : "",
		   kind, saved, skipped);
}

int replay_run(struct batch_env *env, struct batch *b,
	       const struct replay_opts *o)
{
	struct replay r = {.env = env, .b = b, .o = o};
	const char *kv[12];
	struct kafka_client_spec spec = {
	    .type = RD_KAFKA_CONSUMER,
	    .what = "replay consumer",
	    .brokers = env->cfg->brokers,
	    .client_id = "sluice-worker-replay",
	    .settings = kv,
	    .passthrough = env->cfg->kafka,
	};
	struct batch_totals t;
	struct buf kinds;
	int rc = 1;

	kafka_settings(&r, kv);
	r.tty = isatty(STDERR_FILENO);
	r.cap = (size_t)env->cfg->batch_max;
	r.msgs = xcalloc(r.cap, sizeof(*r.msgs));
	r.rk = kafka_client_new(&spec, r.errstr, sizeof(r.errstr));
	if (!r.rk)
		goto out;
	rd_kafka_poll_set_consumer(r.rk);
	if (!list_partitions(&r) || !plan(&r) || !resume_from_stored(&r) ||
	    !assign(&r))
		goto out;
	log_info("replaying %lld records of %s as group %s%s",
		 (long long)r.total, env->cfg->topic, env->cfg->group_id,
		 o->dry_run ? " (dry run: nothing is written)" : "");
	r.t0 = util_mono_ms();
	while (!all_done(&r) && !*env->stopping) {
		size_t n = collect(&r);

		if (n > 0)
			apply(&r, n);
		progress(&r, false);
		pace(&r);
	}
	progress(&r, true);
	/* The last batches' outbox rows go once Redis confirmed them. */
	batch_idle(b);
	if (cache_pending(env->cache) > 0)
		log_warn(
		    "%zu invalidations are still owed to Redis under group %s: run the replay again with that --group once Redis answers, or the keys expire by their TTL",
		    cache_pending(env->cache), env->cfg->group_id);
	batch_totals(b, &t);
	if (!all_done(&r)) {
		log_warn(
		    "replay stopped with %lld records left; run it again with --group %s to resume",
		    (long long)remaining(&r), env->cfg->group_id);
		rc = 130;
	} else {
		rc = 0;
	}
	buf_init(&kinds);
	batch_kind_totals(b, kind_line, &kinds);
	log_info(
	    "replay %s: %llu records in %llu batches, %llu rows %s, %llu duplicates skipped, %llu %s (%s)",
	    rc == 0 ? "done" : "stopped", t.records, t.batches, t.saved,
	    o->dry_run ? "would be saved" : "saved", t.skipped, t.dead,
	    o->dry_run ? "would be dead-lettered" : "dead-lettered",
	    kinds.data);
	if (o->dry_run)
		printf("dry run: %llu records read, %llu rows would be saved, "
		       "%llu duplicates skipped, %llu records would be "
		       "dead-lettered (%s); nothing was written\n",
		       t.records, t.saved, t.skipped, t.dead, kinds.data);
	buf_free(&kinds);
out:
	if (rc == 1 && r.refused)
		rc = 2;
	if (rc != 0 && rc != 130)
		log_error("replay: %s", r.errstr);
	if (r.rk) {
		rd_kafka_consumer_close(r.rk);
		rd_kafka_destroy(r.rk);
	}
	free(r.parts);
	free(r.kp);
	free(r.msgs);
	return rc;
}
