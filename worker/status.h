/* What GET /status shows of each pipeline, published by the pipeline's own
 * thread (as metrics.c's figures are), and the operator's pause, which the
 * pipelines read. The endpoint never touches a pipeline's objects. */
#ifndef SLUICE_STATUS_H
#define SLUICE_STATUS_H

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct status_pipe;

/* What a pipeline reports between batches and while one waits. */
struct status_figures {
	unsigned long long owed; /* invalidations owed (cache_pending) */
	int lookups_inflight;	 /* lead-context lookups */
	int composer_inflight;	 /* model calls */
	bool paused;		 /* holding its partitions for the operator */
};
/* A partition's log start, high watermark and the consumer's position as
 * the pipeline's consumer last heard them (-1 each when unknown). */
typedef void (*status_offsets_fn)(void *arg, int32_t partition, int64_t *low,
				  int64_t *high, int64_t *position);

/* A pipeline's entry, registered for the endpoint. Freed by
 * status_cleanup(). */
struct status_pipe *status_pipe_new(const char *name, const char *group);
/* The hooks called on this thread from now on report into p (NULL: none,
 * as in replay). */
void status_pipe_enter(struct status_pipe *p);
void status_cleanup(void);

/* On the pipeline's thread. */
void status_report(const struct status_figures *f, status_offsets_fn offsets,
		   void *arg);
/* Partitions assigned (offsets = where consumption starts, or
 * RD_KAFKA_OFFSET_INVALID) or revoked. */
void status_rebalance(bool assign, const rd_kafka_topic_partition_list_t *l);
/* A batch committed the next offsets of its partitions to PostgreSQL. */
void status_committed(const int32_t *parts, const int64_t *next, int n);
/* A batch of records starts (records > 0) or ends (0). */
void status_batch(size_t records);

/* The operator's pause (POST /admin/pause, /admin/resume): set on the
 * endpoint's thread, read by each pipeline before it takes a batch. */
void status_set_paused(bool paused);
bool status_paused(void);
/* Pipelines registered, and how many report that they hold their
 * partitions paused now. */
int status_pipelines(int *paused);

/* Every pipeline as JSON, added to out as "pipelines". */
void status_render(cJSON *out);

#endif
