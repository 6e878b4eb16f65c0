/* What GET /status shows of each pipeline, and the operator's pause. Each
 * pipeline (on a thread of its own) writes its entry through a
 * thread-local pointer, as metrics.c's hooks do; the endpoint, on the
 * launcher's thread, reads the entries under their locks. */
#include "status.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/util.h"

struct status_part {
	int32_t partition;
	int64_t stored; /* next offset PostgreSQL holds; -1: none yet */
	int64_t low, high, position;
};

struct status_pipe {
	pthread_mutex_t lock;
	char name[32];
	char group[256];
	struct status_part *parts;
	int n_parts, cap_parts;
	size_t batch_records;	   /* 0: no batch open */
	int64_t batch_started_ms;  /* monotonic */
	int64_t last_commit_ms;	   /* wall clock; 0: none since start */
	struct status_figures fig; /* as last reported */
	struct status_pipe *next_pipe;
};

static pthread_mutex_t pipes_lock = PTHREAD_MUTEX_INITIALIZER;
static struct status_pipe *pipes;
static _Thread_local struct status_pipe *cur;
static atomic_bool pause_wanted;

struct status_pipe *status_pipe_new(const char *name, const char *group)
{
	struct status_pipe *p = xcalloc(1, sizeof(*p));
	struct status_pipe **tail;

	pthread_mutex_init(&p->lock, NULL);
	snprintf(p->name, sizeof(p->name), "%s", name);
	snprintf(p->group, sizeof(p->group), "%s", group);
	pthread_mutex_lock(&pipes_lock);
	for (tail = &pipes; *tail; tail = &(*tail)->next_pipe)
		;
	*tail = p;
	pthread_mutex_unlock(&pipes_lock);
	return p;
}

void status_pipe_enter(struct status_pipe *p)
{
	cur = p;
}

void status_cleanup(void)
{
	pthread_mutex_lock(&pipes_lock);
	while (pipes) {
		struct status_pipe *p = pipes;

		pipes = p->next_pipe;
		free(p->parts);
		pthread_mutex_destroy(&p->lock);
		free(p);
	}
	pthread_mutex_unlock(&pipes_lock);
	cur = NULL;
}

static struct status_part *part_find(struct status_pipe *s, int32_t id)
{
	for (int i = 0; i < s->n_parts; i++)
		if (s->parts[i].partition == id)
			return &s->parts[i];
	return NULL;
}

void status_rebalance(bool assign, const rd_kafka_topic_partition_list_t *l)
{
	struct status_pipe *s = cur;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	for (int i = 0; i < l->cnt; i++) {
		int32_t id = l->elems[i].partition;
		struct status_part *p = part_find(s, id);

		if (!assign) {
			if (p)
				*p = s->parts[--s->n_parts];
			continue;
		}
		if (!p) {
			if (s->n_parts == s->cap_parts) {
				s->cap_parts =
				    s->cap_parts ? 2 * s->cap_parts : 8;
				s->parts =
				    xrealloc(s->parts, (size_t)s->cap_parts *
							   sizeof(*s->parts));
			}
			p = &s->parts[s->n_parts++];
			p->partition = id;
		}
		p->stored = l->elems[i].offset >= 0 ? l->elems[i].offset : -1;
		p->low = p->high = p->position = -1;
	}
	pthread_mutex_unlock(&s->lock);
}

void status_committed(const int32_t *parts, const int64_t *next, int n)
{
	struct status_pipe *s = cur;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	for (int i = 0; i < n; i++) {
		struct status_part *p = part_find(s, parts[i]);

		if (p && next[i] > p->stored)
			p->stored = next[i];
	}
	s->last_commit_ms = util_now_ms();
	pthread_mutex_unlock(&s->lock);
}

void status_batch(size_t records)
{
	struct status_pipe *s = cur;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->batch_records = records;
	s->batch_started_ms = records ? util_mono_ms() : 0;
	pthread_mutex_unlock(&s->lock);
}

void status_report(const struct status_figures *f, status_offsets_fn offsets,
		   void *arg)
{
	struct status_pipe *s = cur;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->fig = *f;
	for (int i = 0; offsets && i < s->n_parts; i++) {
		struct status_part *p = &s->parts[i];

		offsets(arg, p->partition, &p->low, &p->high, &p->position);
	}
	pthread_mutex_unlock(&s->lock);
}

void status_set_paused(bool paused)
{
	atomic_store(&pause_wanted, paused);
}

bool status_paused(void)
{
	return atomic_load(&pause_wanted);
}

int status_pipelines(int *paused)
{
	int n = 0;

	*paused = 0;
	pthread_mutex_lock(&pipes_lock);
	for (struct status_pipe *s = pipes; s; s = s->next_pipe) {
		pthread_mutex_lock(&s->lock);
		n++;
		*paused += s->fig.paused;
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
	const struct status_part *x = a, *y = b;

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

static void render_pipe(struct status_pipe *s, cJSON *arr, int64_t mono,
			int64_t wall)
{
	cJSON *o = cJSON_CreateObject(), *parts;

	cJSON_AddStringToObject(o, "name", s->name);
	cJSON_AddStringToObject(o, "group", s->group);
	cJSON_AddBoolToObject(o, "paused", s->fig.paused);
	if (s->n_parts > 1) /* none yet: parts is NULL */
		qsort(s->parts, (size_t)s->n_parts, sizeof(*s->parts),
		      part_cmp);
	cJSON_AddNumberToObject(o, "assigned", s->n_parts);
	parts = cJSON_AddArrayToObject(o, "partitions");
	for (int i = 0; i < s->n_parts; i++) {
		const struct status_part *p = &s->parts[i];
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
	add_time(o, "last_commit", s->last_commit_ms);
	if (s->last_commit_ms > 0)
		cJSON_AddNumberToObject(o, "last_commit_age_s",
					(double)(wall - s->last_commit_ms) /
					    1000.0);
	else
		cJSON_AddNullToObject(o, "last_commit_age_s");
	cJSON_AddNumberToObject(o, "invalidations_owed", (double)s->fig.owed);
	cJSON_AddNumberToObject(o, "lookups_in_flight",
				s->fig.lookups_inflight);
	cJSON_AddNumberToObject(o, "composer_in_flight",
				s->fig.composer_inflight);
	cJSON_AddItemToArray(arr, o);
}

void status_render(cJSON *out)
{
	cJSON *arr = cJSON_AddArrayToObject(out, "pipelines");
	int64_t mono = util_mono_ms(), wall = util_now_ms();

	pthread_mutex_lock(&pipes_lock);
	for (struct status_pipe *s = pipes; s; s = s->next_pipe) {
		pthread_mutex_lock(&s->lock);
		render_pipe(s, arr, mono, wall);
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&pipes_lock);
}
