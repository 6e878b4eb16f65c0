/* The worker's figures: what the batch, the consumer and the cache report
 * through one-line hooks, plus what they already count, rendered for
 * GET /metrics in the Prometheus text format and for GET /status as
 * JSON. */
#include "metrics.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/log.h"
#include "../common/prom.h"
#include "../common/util.h"
#include "contexts.h"
#include "handlers/handler.h"

_Static_assert(METRICS_KINDS == MAX_KINDS, "one figure per handler");

#define N_RECORD_BUCKETS 12
#define N_MS_BUCKETS 12

static const long record_le[N_RECORD_BUCKETS] = {
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000};
static const int64_t ms_le[N_MS_BUCKETS] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000};

/* An assigned partition and the next offset PostgreSQL holds for it
 * (-1 while unknown: no stored offset and nothing committed yet), with
 * what the pipeline last saw of it (metrics_pipe_report). */
struct part {
	int32_t partition;
	int64_t next;
	int64_t lag;	  /* -1: not known yet */
	int64_t since_ms; /* lagging, uncommitted, since then (0: not) */
	/* For /status: the next offset PostgreSQL holds (-1: none yet), and
	 * the log start, high watermark and position as last heard. */
	int64_t stored, low, high, position;
};

/* One pipeline's figures. Its thread writes them (the hooks below find it
 * through a thread-local pointer); the HTTP endpoint, on the launcher's
 * thread, reads them under the lock. */
struct metrics_pipe {
	pthread_mutex_t lock;
	char kind[32];
	char group[256];	  /* "": not shown by /status (replay) */
	char topic[256];	  /* what its partitions are of */
	size_t batch_records;	  /* 0: no batch open */
	int64_t batch_started_ms; /* monotonic */
	int64_t committed_ms;	  /* wall clock; 0: none since start */
	int lookups_inflight;
	bool held; /* holding its partitions for the operator */
	uint64_t records_le[N_RECORD_BUCKETS + 1]; /* last: +Inf */
	uint64_t ms_le[N_MS_BUCKETS + 1];
	uint64_t observed, records_sum;
	int64_t ms_sum;
	uint64_t retries;
	uint64_t assigns, revokes;
	int64_t
	    last_commit_ms; /* wall clock: the last commit, else the start */
	uint64_t leads, lookups, lookup_failures, hits, misses, lease_waits;
	uint64_t invalid, over_budget, cancels;
	int peak_inflight;
	struct metrics_composer composer;
	struct part *parts;
	int n_parts, cap_parts;
	/* Kafka, from the statistics: -1 = nothing known yet. */
	int brokers_up, brokers;
	char kafka_why[160];
	char kafka_denied[256]; /* "" or why Kafka refuses this pipeline */
	bool denied_auth;
	/* What the pipeline's thread reported last. */
	struct metrics_totals totals;
	unsigned long long kind_saved[MAX_KINDS];
	unsigned long long inv, removed, owed;
	int assigned;
	struct metrics_pipe *next_pipe;
};

static pthread_mutex_t pipes_lock = PTHREAD_MUTEX_INITIALIZER;
/* Written and read on the launcher's thread only. */
static unsigned long long reloads[MR_COUNT];
static bool restart_pending;
static struct metrics_pipe *pipes;
static _Thread_local struct metrics_pipe *cur;
/* Wall clock, ms; under pipes_lock. */
static int64_t config_loaded_ms;

const char *const metrics_dead_names[] = {"unknown_kind", "empty", "invalid",
					  "refused_by_postgres", NULL};
_Static_assert(sizeof(metrics_dead_names) / sizeof(metrics_dead_names[0]) ==
		   MD_COUNT + 1,
	       "a name per class");

void metrics_config_loaded(void)
{
	pthread_mutex_lock(&pipes_lock);
	config_loaded_ms = util_now_ms();
	pthread_mutex_unlock(&pipes_lock);
}

struct metrics_pipe *metrics_pipe_new(const char *kind, const char *group,
				      const char *topic)
{
	struct metrics_pipe *p = xcalloc(1, sizeof(*p));
	struct metrics_pipe **tail;

	pthread_mutex_init(&p->lock, NULL);
	snprintf(p->kind, sizeof(p->kind), "%s", kind);
	snprintf(p->group, sizeof(p->group), "%s", group ? group : "");
	snprintf(p->topic, sizeof(p->topic), "%s", topic);
	p->brokers_up = -1;
	/* Before its first commit, "no commit for N minutes" counts from
	 * the pipeline's start. */
	p->last_commit_ms = util_now_ms();
	pthread_mutex_lock(&pipes_lock);
	for (tail = &pipes; *tail; tail = &(*tail)->next_pipe)
		;
	*tail = p;
	pthread_mutex_unlock(&pipes_lock);
	return p;
}

void metrics_pipe_enter(struct metrics_pipe *p)
{
	cur = p;
}

void metrics_cleanup(void)
{
	pthread_mutex_lock(&pipes_lock);
	while (pipes) {
		struct metrics_pipe *p = pipes;

		pipes = p->next_pipe;
		free(p->parts);
		pthread_mutex_destroy(&p->lock);
		free(p);
	}
	pthread_mutex_unlock(&pipes_lock);
	cur = NULL;
}

/* The calling thread's pipeline, locked; NULL (nothing to count) on a
 * thread that runs none. */
static struct metrics_pipe *lock_cur(void)
{
	if (cur)
		pthread_mutex_lock(&cur->lock);
	return cur;
}

static void unlock_cur(struct metrics_pipe *m)
{
	if (m)
		pthread_mutex_unlock(&m->lock);
}

void metrics_batch(size_t records, int64_t ms, const struct contexts_stats *s)
{
	struct metrics_pipe *m = lock_cur();
	int i;

	if (!m)
		return;
	for (i = 0; i < N_RECORD_BUCKETS && (long)records > record_le[i]; i++)
		;
	m->records_le[i]++;
	for (i = 0; i < N_MS_BUCKETS && ms > ms_le[i]; i++)
		;
	m->ms_le[i]++;
	m->observed++;
	m->records_sum += records;
	m->ms_sum += ms;
	if (s) {
		m->leads += s->leads;
		m->lookups += s->lookups;
		m->lookup_failures += s->failures;
		m->hits += s->hits;
		m->misses += s->misses;
		m->lease_waits += s->lease_waits;
		m->invalid += s->invalid;
		m->over_budget += s->over_budget;
		m->cancels += s->cancels;
		if (s->peak_inflight > m->peak_inflight)
			m->peak_inflight = s->peak_inflight;
	}
	unlock_cur(m);
}

static struct part *part_find(struct metrics_pipe *m, int32_t p)
{
	for (int i = 0; i < m->n_parts; i++)
		if (m->parts[i].partition == p)
			return &m->parts[i];
	return NULL;
}

void metrics_committed(const int32_t *parts, const int64_t *next, int n)
{
	struct metrics_pipe *m = lock_cur();
	int64_t now = util_mono_ms();

	if (m)
		m->last_commit_ms = m->committed_ms = util_now_ms();
	for (int i = 0; m && i < n; i++) {
		struct part *p = part_find(m, parts[i]);

		if (p) {
			p->next = next[i];
			if (next[i] > p->stored)
				p->stored = next[i];
			if (p->since_ms)
				p->since_ms = now; /* moved: a new period */
		}
	}
	unlock_cur(m);
}

void metrics_consumed(int32_t partition, int64_t offset)
{
	struct metrics_pipe *m = lock_cur();
	struct part *p = m ? part_find(m, partition) : NULL;

	if (p && p->next < 0)
		p->next = offset;
	unlock_cur(m);
}

void metrics_retry(void)
{
	struct metrics_pipe *m = lock_cur();

	if (m)
		m->retries++;
	unlock_cur(m);
}

void metrics_rebalance(bool assign, const rd_kafka_topic_partition_list_t *l)
{
	struct metrics_pipe *m = lock_cur();

	if (!m)
		return;
	if (assign)
		m->assigns++;
	else
		m->revokes++;
	for (int i = 0; i < l->cnt; i++) {
		int32_t id = l->elems[i].partition;
		struct part *p = part_find(m, id);

		if (!assign) {
			if (p)
				*p = m->parts[--m->n_parts];
			continue;
		}
		if (!p) {
			if (m->n_parts == m->cap_parts) {
				m->cap_parts =
				    m->cap_parts ? m->cap_parts * 2 : 8;
				m->parts =
				    xrealloc(m->parts, (size_t)m->cap_parts *
							   sizeof(*m->parts));
			}
			p = &m->parts[m->n_parts++];
			p->partition = id;
		}
		p->next = l->elems[i].offset >= 0 ? l->elems[i].offset : -1;
		p->stored = p->next;
		p->low = p->high = p->position = -1;
		p->lag = -1;
		p->since_ms = 0;
	}
	unlock_cur(m);
}

void metrics_pipe_report(const struct metrics_figures *f,
			 metrics_offsets_fn offsets, void *arg)
{
	struct metrics_pipe *m = cur;
	int64_t now = util_mono_ms();

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->totals = f->totals;
	m->composer = f->composer;
	memcpy(m->kind_saved, f->kind_saved, sizeof(m->kind_saved));
	m->inv = f->invalidations;
	m->removed = f->keys_removed;
	m->owed = f->owed;
	m->assigned = f->assigned;
	m->lookups_inflight = f->lookups_inflight;
	m->held = f->held;
	for (int i = 0; offsets && i < m->n_parts; i++) {
		struct part *p = &m->parts[i];
		int64_t lo, hi, pos, next = p->next;

		offsets(arg, p->partition, &lo, &hi, &pos);
		p->low = lo;
		p->high = hi;
		p->position = pos;
		if (hi < 0) {
			p->lag = -1; /* nothing fetched yet: unknown */
			continue;
		}
		/* Nothing stored and nothing consumed yet: consumption
		 * starts where librdkafka says (its position, else the log
		 * start). */
		if (next < 0)
			next = pos >= 0 ? pos : lo;
		p->lag = next >= 0 && hi > next ? hi - next : 0;
		if (p->lag == 0)
			p->since_ms = 0;
		else if (!p->since_ms)
			p->since_ms = now;
	}
	pthread_mutex_unlock(&m->lock);
}

/* Runs on the worker thread inside rd_kafka_consumer_poll(). Brokers with
 * a node id count (a bootstrap entry takes its broker's id once metadata
 * names it); the others only while none has one; logical and internal
 * entries (the group coordinator) are views of a real one. */
void metrics_kafka_stats(const char *json, size_t len)
{
	cJSON *doc = cJSON_ParseWithLength(json, len);
	const cJSON *brokers = cJSON_GetObjectItemCaseSensitive(doc, "brokers");
	const cJSON *b;
	int up = 0, n = 0, boot_up = 0, boot = 0;
	char states[96] = "";
	struct metrics_pipe *m;

	if (!cJSON_IsObject(brokers)) {
		cJSON_Delete(doc);
		return;
	}
	cJSON_ArrayForEach(b, brokers)
	{
		const cJSON *src =
		    cJSON_GetObjectItemCaseSensitive(b, "source");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(b, "nodeid");
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(b, "state");
		bool is_up =
		    cJSON_IsString(st) && strcmp(st->valuestring, "UP") == 0;

		if (!cJSON_IsString(src) ||
		    strcmp(src->valuestring, "logical") == 0 ||
		    strcmp(src->valuestring, "internal") == 0)
			continue;
		if (cJSON_IsNumber(id) && id->valueint >= 0) {
			n++;
			up += is_up;
			if (!is_up && cJSON_IsString(st) &&
			    strlen(states) + strlen(st->valuestring) + 2 <
				sizeof(states))
				snprintf(states + strlen(states),
					 sizeof(states) - strlen(states),
					 "%s%s", states[0] ? "," : "",
					 st->valuestring);
		} else {
			boot++;
			boot_up += is_up;
		}
	}
	if (n == 0) {
		n = boot;
		up = boot_up;
	}
	cJSON_Delete(doc);
	m = lock_cur();
	if (!m)
		return;
	m->brokers = n;
	m->brokers_up = up;
	/* A broker is UP only once the link authenticated. */
	if (up > 0 && m->denied_auth) {
		m->kafka_denied[0] = '\0';
		m->denied_auth = false;
	}
	if (up == 0)
		snprintf(m->kafka_why, sizeof(m->kafka_why),
			 "no broker up (%d known%s%s)", n,
			 states[0] ? ": " : "", states);
	unlock_cur(m);
}

void metrics_kafka_down(const char *reason)
{
	struct metrics_pipe *m = lock_cur();

	if (!m)
		return;
	m->brokers_up = 0;
	snprintf(m->kafka_why, sizeof(m->kafka_why), "no broker up (%s)",
		 reason);
	unlock_cur(m);
}

void metrics_kafka_denied(const char *cause, bool auth)
{
	struct metrics_pipe *m = lock_cur();

	if (!m)
		return;
	snprintf(m->kafka_denied, sizeof(m->kafka_denied), "%s", cause);
	m->denied_auth = auth && cause[0];
	unlock_cur(m);
}

bool metrics_kafka_up(char *why, size_t why_size)
{
	bool up = true;

	pthread_mutex_lock(&pipes_lock);
	for (struct metrics_pipe *m = pipes; m && up; m = m->next_pipe) {
		pthread_mutex_lock(&m->lock);
		if (m->kafka_denied[0]) {
			up = false;
			snprintf(why, why_size, "%s", m->kafka_denied);
		} else if (m->brokers_up == 0) {
			up = false;
			snprintf(why, why_size, "%s", m->kafka_why);
		}
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_unlock(&pipes_lock);
	return up;
}

int metrics_assigned(void)
{
	int most = 0;

	pthread_mutex_lock(&pipes_lock);
	for (struct metrics_pipe *m = pipes; m; m = m->next_pipe) {
		pthread_mutex_lock(&m->lock);
		if (m->assigned > most)
			most = m->assigned;
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_unlock(&pipes_lock);
	return most;
}

int metrics_stalled(int stall_ms, struct buf *why)
{
	int64_t now = util_mono_ms();
	int stalled = 0;

	pthread_mutex_lock(&pipes_lock);
	for (struct metrics_pipe *m = pipes; m; m = m->next_pipe) {
		pthread_mutex_lock(&m->lock);
		for (int i = 0; i < m->n_parts; i++) {
			const struct part *p = &m->parts[i];

			if (!p->since_ms || now - p->since_ms <= stall_ms)
				continue;
			if (stalled++ < 8)
				buf_printf(why,
					   "%s%s [%d]: %lld records behind, "
					   "nothing committed for %lld s",
					   why->len ? "; " : "", m->kind,
					   (int)p->partition, (long long)p->lag,
					   (long long)(now - p->since_ms) /
					       1000);
		}
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_unlock(&pipes_lock);
	return stalled;
}

void metrics_totals(struct metrics_totals *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&pipes_lock);
	for (struct metrics_pipe *m = pipes; m; m = m->next_pipe) {
		pthread_mutex_lock(&m->lock);
		out->batches += m->totals.batches;
		out->records += m->totals.records;
		out->saved += m->totals.saved;
		out->skipped += m->totals.skipped;
		out->dead += m->totals.dead;
		for (int i = 0; i < MD_COUNT; i++)
			out->dead_by[i] += m->totals.dead_by[i];
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_unlock(&pipes_lock);
}

/* The figures of every pipeline added up (histograms bucket by bucket),
 * and each partition's lag as the largest any pipeline has. Partitions
 * are told apart by topic too: with a topic per kind each pipeline has a
 * partition 0 of its own; on a shared topic every pipeline reads the same
 * ones, and the one furthest behind is shown. */
struct sum {
	struct metrics_pipe all;
	struct part parts[1024];
	const char *part_topic[1024]; /* parts[i]'s, a pipe's topic */
	int n_parts;
};

static void sum_pipe(struct sum *s, const struct metrics_pipe *m)
{
	struct metrics_pipe *a = &s->all;

	for (int i = 0; i <= N_RECORD_BUCKETS; i++)
		a->records_le[i] += m->records_le[i];
	for (int i = 0; i <= N_MS_BUCKETS; i++)
		a->ms_le[i] += m->ms_le[i];
	a->observed += m->observed;
	a->records_sum += m->records_sum;
	a->ms_sum += m->ms_sum;
	a->retries += m->retries;
	a->assigns += m->assigns;
	a->revokes += m->revokes;
	a->leads += m->leads;
	a->lookups += m->lookups;
	a->lookup_failures += m->lookup_failures;
	a->hits += m->hits;
	a->misses += m->misses;
	a->lease_waits += m->lease_waits;
	a->invalid += m->invalid;
	a->over_budget += m->over_budget;
	a->cancels += m->cancels;
	if (m->peak_inflight > a->peak_inflight)
		a->peak_inflight = m->peak_inflight;
	a->totals.batches += m->totals.batches;
	a->totals.records += m->totals.records;
	a->totals.skipped += m->totals.skipped;
	a->totals.dead += m->totals.dead;
	for (int i = 0; i < MD_COUNT; i++)
		a->totals.dead_by[i] += m->totals.dead_by[i];
	for (int i = 0; i < MAX_KINDS; i++)
		a->kind_saved[i] += m->kind_saved[i];
	a->inv += m->inv;
	a->removed += m->removed;
	a->owed += m->owed;
	if (m->assigned > a->assigned)
		a->assigned = m->assigned;
	if (a->brokers_up < 0 ||
	    (m->brokers_up >= 0 && m->brokers_up < a->brokers_up))
		a->brokers_up = m->brokers_up;
	for (int i = 0; i < m->n_parts; i++) {
		const struct part *p = &m->parts[i];
		int j;

		if (p->lag < 0)
			continue;
		for (j = 0; j < s->n_parts; j++)
			if (s->parts[j].partition == p->partition &&
			    strcmp(s->part_topic[j], m->topic) == 0)
				break;
		if (j == s->n_parts) {
			if (s->n_parts ==
			    (int)(sizeof(s->parts) / sizeof(s->parts[0])))
				continue;
			s->part_topic[s->n_parts] = m->topic;
			s->parts[s->n_parts++] = *p;
		} else if (p->lag > s->parts[j].lag) {
			s->parts[j].lag = p->lag;
		}
	}
}

static void put_lag(struct buf *out, const struct sum *s)
{
	buf_puts(out, "# HELP sluice_worker_partition_lag Records in an "
		      "assigned partition not yet committed to PostgreSQL "
		      "(by the pipeline furthest behind).\n"
		      "# TYPE sluice_worker_partition_lag gauge\n");
	for (int i = 0; i < s->n_parts; i++) {
		buf_puts(out, "sluice_worker_partition_lag{topic=\"");
		prom_label(out, s->part_topic[i]);
		buf_printf(out, "\",partition=\"%d\"} %lld\n",
			   (int)s->parts[i].partition,
			   (long long)s->parts[i].lag);
	}
}

/* Each pipeline's own lag and how long its oldest uncommitted record has
 * waited: where a kind stuck on its dependency shows. */
static void put_pipelines(struct buf *out)
{
	int64_t now = util_mono_ms();

	buf_puts(out, "# HELP sluice_worker_pipeline_lag Records the "
		      "pipeline has not committed yet, all its partitions.\n"
		      "# TYPE sluice_worker_pipeline_lag gauge\n");
	for (struct metrics_pipe *m = pipes; m; m = m->next_pipe) {
		long long lag = 0;

		pthread_mutex_lock(&m->lock);
		for (int i = 0; i < m->n_parts; i++)
			lag += m->parts[i].lag > 0 ? m->parts[i].lag : 0;
		pthread_mutex_unlock(&m->lock);
		buf_printf(out,
			   "sluice_worker_pipeline_lag{pipeline=\"%s\"} "
			   "%lld\n",
			   m->kind, lag);
	}
	buf_puts(out, "# HELP sluice_worker_pipeline_stalled_seconds How long "
		      "the pipeline has been behind without committing.\n"
		      "# TYPE sluice_worker_pipeline_stalled_seconds gauge\n");
	for (struct metrics_pipe *m = pipes; m; m = m->next_pipe) {
		int64_t oldest = 0;

		pthread_mutex_lock(&m->lock);
		for (int i = 0; i < m->n_parts; i++)
			if (m->parts[i].since_ms &&
			    now - m->parts[i].since_ms > oldest)
				oldest = now - m->parts[i].since_ms;
		pthread_mutex_unlock(&m->lock);
		buf_printf(out,
			   "sluice_worker_pipeline_stalled_seconds{pipeline="
			   "\"%s\"} %.3f\n",
			   m->kind, (double)oldest / 1000.0);
	}
	prom_family(out, "sluice_worker_last_commit_timestamp_seconds", "gauge",
		    "When the pipeline last committed to PostgreSQL (Unix "
		    "time; its start until its first commit).");
	for (struct metrics_pipe *m = pipes; m; m = m->next_pipe) {
		int64_t t;

		pthread_mutex_lock(&m->lock);
		t = m->last_commit_ms;
		pthread_mutex_unlock(&m->lock);
		buf_printf(out,
			   "sluice_worker_last_commit_timestamp_seconds{"
			   "pipeline=\"%s\"} %.3f\n",
			   m->kind, (double)t / 1000.0);
	}
}

static void put_histograms(struct buf *out, const struct metrics_pipe *m)
{
	uint64_t cum = 0;

	buf_puts(out,
		 "# HELP sluice_worker_batch_records Records per committed "
		 "batch.\n# TYPE sluice_worker_batch_records histogram\n");
	for (int i = 0; i <= N_RECORD_BUCKETS; i++) {
		cum += m->records_le[i];
		if (i < N_RECORD_BUCKETS)
			buf_printf(out,
				   "sluice_worker_batch_records_bucket{le=\"%"
				   "ld\"} %llu\n",
				   record_le[i], (unsigned long long)cum);
		else
			buf_printf(out,
				   "sluice_worker_batch_records_bucket{le=\"+"
				   "Inf\"} %llu\n",
				   (unsigned long long)cum);
	}
	buf_printf(out,
		   "sluice_worker_batch_records_sum %llu\n"
		   "sluice_worker_batch_records_count %llu\n",
		   (unsigned long long)m->records_sum,
		   (unsigned long long)m->observed);
	cum = 0;
	buf_puts(out,
		 "# HELP sluice_worker_batch_duration_seconds Time from "
		 "a batch's first attempt to its commit and "
		 "invalidation, retries included.\n"
		 "# TYPE sluice_worker_batch_duration_seconds histogram\n");
	for (int i = 0; i <= N_MS_BUCKETS; i++) {
		cum += m->ms_le[i];
		if (i < N_MS_BUCKETS)
			buf_printf(
			    out,
			    "sluice_worker_batch_duration_seconds_bucket{"
			    "le=\"%g\"} %llu\n",
			    (double)ms_le[i] / 1000.0, (unsigned long long)cum);
		else
			buf_printf(
			    out,
			    "sluice_worker_batch_duration_seconds_bucket{"
			    "le=\"+Inf\"} %llu\n",
			    (unsigned long long)cum);
	}
	buf_printf(out,
		   "sluice_worker_batch_duration_seconds_sum %.3f\n"
		   "sluice_worker_batch_duration_seconds_count %llu\n",
		   (double)m->ms_sum / 1000.0, (unsigned long long)m->observed);
}

const char *const metrics_call_names[] = {
    "ok",      "refused", "bad_request", "rate_limited", "server_error",
    "timeout", "connect", "bad_answer",	 "account",	 NULL};
const double metrics_compose_le[METRICS_COMPOSE_BUCKETS] = {
    0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60};

bool metrics_composer_held(char *why, size_t why_size)
{
	bool held = false;

	pthread_mutex_lock(&pipes_lock);
	for (struct metrics_pipe *m = pipes; m && !held; m = m->next_pipe) {
		pthread_mutex_lock(&m->lock);
		if (m->composer.held) {
			held = true;
			snprintf(why, why_size, "%s", m->composer.held_why);
		}
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_unlock(&pipes_lock);
	return held;
}

static void sum_composer(struct metrics_composer *a,
			 const struct metrics_composer *m)
{
	if (!m->present)
		return;
	a->present = true;
	for (int i = 0; i < MC_COUNT; i++)
		a->calls[i] += m->calls[i];
	for (int i = 0; i < m->n_models; i++) {
		int j;

		for (j = 0; j < a->n_models; j++)
			if (strcmp(a->tokens[j].model, m->tokens[i].model) == 0)
				break;
		if (j == a->n_models) {
			if (a->n_models == METRICS_MODELS)
				continue;
			a->n_models++;
			snprintf(a->tokens[j].model, sizeof(a->tokens[j].model),
				 "%s", m->tokens[i].model);
		}
		a->tokens[j].prompt += m->tokens[i].prompt;
		a->tokens[j].completion += m->tokens[i].completion;
	}
	for (int i = 0; i <= METRICS_COMPOSE_BUCKETS; i++)
		a->le[i] += m->le[i];
	a->lat_count += m->lat_count;
	a->lat_sum_s += m->lat_sum_s;
	a->window += m->window;
	a->inflight += m->inflight;
	a->composed += m->composed;
	a->failed += m->failed;
	a->held_ms += m->held_ms;
	a->held = a->held || m->held;
}

static void put_composer(struct buf *out, const struct metrics_composer *c)
{
	unsigned long long cum = 0;

	if (!c->present)
		return;
	buf_puts(out, "# HELP sluice_worker_composer_calls_total Calls to the "
		      "model endpoint by outcome, retries and probes "
		      "included.\n"
		      "# TYPE sluice_worker_composer_calls_total counter\n");
	for (int i = 0; i < MC_COUNT; i++)
		buf_printf(out,
			   "sluice_worker_composer_calls_total{outcome=\"%s\"}"
			   " %llu\n",
			   metrics_call_names[i], c->calls[i]);
	buf_puts(out, "# HELP sluice_worker_composer_tokens_total Tokens the "
		      "provider reported, by model and type.\n"
		      "# TYPE sluice_worker_composer_tokens_total counter\n");
	for (int i = 0; i < c->n_models; i++) {
		for (int t = 0; t < 2; t++) {
			buf_puts(out, "sluice_worker_composer_tokens_total{"
				      "model=\"");
			prom_label(out, c->tokens[i].model);
			buf_printf(out, "\",type=\"%s\"} %llu\n",
				   t ? "completion" : "prompt",
				   t ? c->tokens[i].completion
				     : c->tokens[i].prompt);
		}
	}
	buf_puts(out, "# HELP sluice_worker_composer_call_duration_seconds "
		      "Duration of calls that got an answer.\n"
		      "# TYPE sluice_worker_composer_call_duration_seconds "
		      "histogram\n");
	for (int i = 0; i < METRICS_COMPOSE_BUCKETS; i++) {
		cum += c->le[i];
		buf_printf(out,
			   "sluice_worker_composer_call_duration_seconds_"
			   "bucket{le=\"%g\"} %llu\n",
			   metrics_compose_le[i], cum);
	}
	cum += c->le[METRICS_COMPOSE_BUCKETS];
	buf_printf(out,
		   "sluice_worker_composer_call_duration_seconds_bucket{le=\"+"
		   "Inf\"} %llu\n"
		   "sluice_worker_composer_call_duration_seconds_sum %.3f\n"
		   "sluice_worker_composer_call_duration_seconds_count %llu\n",
		   cum, c->lat_sum_s, c->lat_count);
	buf_printf(out,
		   "# HELP sluice_worker_composer_window Calls the composer "
		   "lets run at once now (composer.concurrency, lowered by "
		   "429s).\n"
		   "# TYPE sluice_worker_composer_window gauge\n"
		   "sluice_worker_composer_window %.2f\n",
		   c->window);
	prom_gauge(out, "sluice_worker_composer_in_flight",
		   "Calls to the model endpoint running now.", c->inflight);
	prom_counter(out, "sluice_worker_composer_rate_limited_total",
		     "Calls answered 429.", c->calls[MC_RATE_LIMITED]);
	prom_counter(out, "sluice_worker_composer_messages_total",
		     "Messages the model wrote.", c->composed);
	prom_counter(out, "sluice_worker_composer_messages_failed_total",
		     "Messages that failed composition (compose_failed, "
		     "compose_refused).",
		     c->failed);
	buf_printf(out,
		   "# HELP sluice_worker_composer_held_seconds_total Time the "
		   "composer held every call because of the account (401, "
		   "402, 403).\n"
		   "# TYPE sluice_worker_composer_held_seconds_total counter\n"
		   "sluice_worker_composer_held_seconds_total %.3f\n",
		   (double)c->held_ms / 1000.0);
	prom_gauge(out, "sluice_worker_composer_held",
		   "1 while the composer is held (401, 402, 403).", c->held);
}

void metrics_render(struct buf *out)
{
	struct sum *s = xcalloc(1, sizeof(*s));
	const struct metrics_pipe *a;

	s->all.brokers_up = -1;
	pthread_mutex_lock(&pipes_lock);
	for (struct metrics_pipe *m = pipes; m; m = m->next_pipe) {
		pthread_mutex_lock(&m->lock);
		sum_pipe(s, m);
		sum_composer(&s->all.composer, &m->composer);
		pthread_mutex_unlock(&m->lock);
	}
	a = &s->all;
	prom_build_info(out, "sluice_worker");
	prom_gauge_s(out, "sluice_worker_last_reload_timestamp_seconds",
		     "When the configuration in force was loaded (Unix time): "
		     "the start, or the last reload.",
		     (double)config_loaded_ms / 1000.0);
	put_lag(out, s);
	put_pipelines(out);
	pthread_mutex_unlock(&pipes_lock);
	put_histograms(out, a);
	prom_counter(out, "sluice_worker_batches_total",
		     "Batches committed to PostgreSQL.", a->totals.batches);
	prom_counter(out, "sluice_worker_records_total",
		     "Kafka records in committed batches.", a->totals.records);
	buf_puts(out, "# HELP sluice_worker_rows_written_total Rows a kind's "
		      "records added or changed (transcript messages, campaign "
		      "outbox rows, chat messages).\n"
		      "# TYPE sluice_worker_rows_written_total counter\n");
	for (int i = 0; i < MAX_KINDS && handlers[i]; i++)
		if (handlers[i]->totals)
			buf_printf(out,
				   "sluice_worker_rows_written_total{kind=\"%"
				   "s\"} %llu\n",
				   handlers[i]->kind, a->kind_saved[i]);
	prom_counter(out, "sluice_worker_duplicates_total",
		     "Rows skipped because they were already stored.",
		     a->totals.skipped);
	prom_family(out, "sluice_worker_dead_letters_total", "counter",
		    "Records sent to the dead-letter topic, by class of reason "
		    "(the dlq-reason header has the whole message).");
	for (int i = 0; i < MD_COUNT; i++)
		buf_printf(out,
			   "sluice_worker_dead_letters_total{reason=\"%s\"} "
			   "%llu\n",
			   metrics_dead_names[i], a->totals.dead_by[i]);
	prom_counter(out, "sluice_worker_retries_total",
		     "Transient failures retried with back-off (a batch, "
		     "reading stored offsets).",
		     a->retries);
	buf_printf(out,
		   "# HELP sluice_worker_rebalances_total Partition "
		   "assignments and revocations.\n"
		   "# TYPE sluice_worker_rebalances_total counter\n"
		   "sluice_worker_rebalances_total{type=\"assign\"} %llu\n"
		   "sluice_worker_rebalances_total{type=\"revoke\"} %llu\n",
		   (unsigned long long)a->assigns,
		   (unsigned long long)a->revokes);
	prom_counter(
	    out, "sluice_worker_invalidations_total",
	    "Invalidations carried out in Redis after commits (keys, "
	    "patterns, version and generation bumps, key-index purges), "
	    "deferred ones included.",
	    a->inv);
	prom_counter(out, "sluice_worker_cache_keys_removed_total",
		     "Redis keys the invalidations removed.", a->removed);
	prom_gauge(out, "sluice_worker_invalidations_owed",
		   "Invalidations deferred while Redis is unreachable.",
		   (long long)a->owed);
	prom_counter(out, "sluice_worker_lead_contexts_total",
		     "Distinct lead contexts batches asked for.", a->leads);
	prom_counter(out, "sluice_worker_lead_lookups_total",
		     "Calls to the lead-context source, retries included.",
		     a->lookups);
	prom_counter(out, "sluice_worker_lead_lookup_failures_total",
		     "Lead-context source calls that failed or timed out.",
		     a->lookup_failures);
	prom_counter(out, "sluice_worker_lead_cache_hits_total",
		     "Lead contexts served by Redis.", a->hits);
	prom_counter(out, "sluice_worker_lead_cache_misses_total",
		     "Lead contexts not in Redis (or Redis down).", a->misses);
	prom_counter(out, "sluice_worker_lead_lease_waits_total",
		     "Waits for another worker's fill of a lead context.",
		     a->lease_waits);
	prom_counter(
	    out, "sluice_worker_lead_contexts_invalid_total",
	    "Lead contexts refused (not UTF-8, a NUL, a repeated key); "
	    "never cached.",
	    a->invalid);
	prom_counter(out, "sluice_worker_lead_contexts_over_budget_total",
		     "Leads given up when a batch's lookup budget ran out.",
		     a->over_budget);
	prom_counter(out, "sluice_worker_lead_lookups_cancelled_total",
		     "PostgreSQL lookups cancelled on the server after their "
		     "timeout or the budget.",
		     a->cancels);
	prom_gauge(out, "sluice_worker_lead_lookups_peak_in_flight",
		   "Most lead-context lookups in flight at once in any batch.",
		   a->peak_inflight);
	prom_gauge(out, "sluice_worker_partitions_assigned",
		   "Partitions this worker owns (in its busiest pipeline).",
		   a->assigned);
	prom_gauge(out, "sluice_worker_kafka_brokers_up",
		   "Kafka brokers up, by librdkafka's statistics (-1 = not "
		   "known yet).",
		   a->brokers_up);
	put_composer(out, &a->composer);
	{
		unsigned long long r[MR_COUNT];
		bool pending;

		pthread_mutex_lock(&pipes_lock);
		memcpy(r, reloads, sizeof(r));
		pending = restart_pending;
		pthread_mutex_unlock(&pipes_lock);
		prom_family(out, "sluice_worker_reloads_total", "counter",
			    "SIGHUP reloads, by result.");
		buf_printf(
		    out,
		    "sluice_worker_reloads_total{result=\"ok\"} %llu\n"
		    "sluice_worker_reloads_total{result=\"restart_required\"} "
		    "%llu\n"
		    "sluice_worker_reloads_total{result=\"failed\"} %llu\n",
		    r[MR_OK], r[MR_RESTART_REQUIRED], r[MR_FAILED]);
		prom_gauge(out, "sluice_worker_config_restart_pending",
			   "1 while a reload changed keys that wait for a "
			   "restart.",
			   pending);
	}
	prom_process(out);
	free(s);
}

void metrics_reload(enum metrics_reload result, bool pending)
{
	pthread_mutex_lock(&pipes_lock);
	reloads[result]++;
	restart_pending = pending;
	/* Applied, whole or the keys that apply at run time. */
	if (result != MR_FAILED)
		config_loaded_ms = util_now_ms();
	pthread_mutex_unlock(&pipes_lock);
}

void metrics_batch_open(size_t records)
{
	struct metrics_pipe *m = lock_cur();

	if (m) {
		m->batch_records = records;
		m->batch_started_ms = records ? util_mono_ms() : 0;
	}
	unlock_cur(m);
}

int metrics_pipelines(int *paused)
{
	int n = 0;

	*paused = 0;
	pthread_mutex_lock(&pipes_lock);
	for (struct metrics_pipe *s = pipes; s; s = s->next_pipe) {
		if (!s->group[0])
			continue;
		pthread_mutex_lock(&s->lock);
		n++;
		*paused += s->held;
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&pipes_lock);
	return n;
}

/* -1 (unknown) as JSON null. */
static void add_offset(cJSON *o, const char *name, int64_t v)
{
	if (v < 0)
		cJSON_AddNullToObject(o, name);
	else
		cJSON_AddNumberToObject(o, name, (double)v);
}

static int part_cmp(const void *a, const void *b)
{
	const struct part *x = a, *y = b;

	return (x->partition > y->partition) - (x->partition < y->partition);
}

/* An RFC 3339 UTC time from wall-clock milliseconds. */
static void add_time(cJSON *o, const char *name, int64_t ms)
{
	char ts[96];
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	if (ms <= 0) {
		cJSON_AddNullToObject(o, name);
		return;
	}
	gmtime_r(&t, &tm);
	snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(ms % 1000));
	cJSON_AddStringToObject(o, name, ts);
}

static void render_pipe(struct metrics_pipe *s, cJSON *arr, int64_t mono,
			int64_t wall)
{
	cJSON *o = cJSON_CreateObject(), *parts;

	cJSON_AddStringToObject(o, "name", s->kind);
	cJSON_AddStringToObject(o, "group", s->group);
	cJSON_AddStringToObject(o, "topic", s->topic);
	cJSON_AddBoolToObject(o, "paused", s->held);
	if (s->n_parts > 1) /* none yet: parts is NULL */
		qsort(s->parts, (size_t)s->n_parts, sizeof(*s->parts),
		      part_cmp);
	cJSON_AddNumberToObject(o, "assigned", s->n_parts);
	parts = cJSON_AddArrayToObject(o, "partitions");
	for (int i = 0; i < s->n_parts; i++) {
		const struct part *p = &s->parts[i];
		cJSON *po = cJSON_CreateObject();
		int64_t next = p->stored >= 0 ? p->stored : p->position;

		cJSON_AddNumberToObject(po, "partition", p->partition);
		add_offset(po, "stored_offset", p->stored);
		add_offset(po, "position", p->position);
		add_offset(po, "high_watermark", p->high);
		/* What is left to apply: from what PostgreSQL holds, or
		 * where consumption starts while nothing is stored. */
		if (p->high >= 0 && next >= 0)
			cJSON_AddNumberToObject(
			    po, "lag",
			    (double)(p->high > next ? p->high - next : 0));
		else
			cJSON_AddNullToObject(po, "lag");
		cJSON_AddItemToArray(parts, po);
	}
	if (s->batch_records) {
		cJSON *b = cJSON_AddObjectToObject(o, "batch");

		cJSON_AddNumberToObject(b, "records", (double)s->batch_records);
		cJSON_AddNumberToObject(b, "age_ms",
					(double)(mono - s->batch_started_ms));
	} else {
		cJSON_AddNullToObject(o, "batch");
	}
	add_time(o, "last_commit", s->committed_ms);
	if (s->committed_ms > 0)
		cJSON_AddNumberToObject(o, "last_commit_age_s",
					(double)(wall - s->committed_ms) /
					    1000.0);
	else
		cJSON_AddNullToObject(o, "last_commit_age_s");
	cJSON_AddNumberToObject(o, "invalidations_owed", (double)s->owed);
	cJSON_AddNumberToObject(o, "lookups_in_flight", s->lookups_inflight);
	cJSON_AddNumberToObject(o, "composer_in_flight", s->composer.inflight);
	cJSON_AddItemToArray(arr, o);
}

void metrics_status(cJSON *out)
{
	cJSON *arr = cJSON_AddArrayToObject(out, "pipelines");
	int64_t mono = util_mono_ms(), wall = util_now_ms();

	pthread_mutex_lock(&pipes_lock);
	for (struct metrics_pipe *s = pipes; s; s = s->next_pipe) {
		pthread_mutex_lock(&s->lock);
		render_pipe(s, arr, mono, wall);
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&pipes_lock);
}
