/* The worker's counters for GET /metrics: what the batch, the consumer and
 * the cache report through one-line hooks, plus what they already count,
 * rendered in the Prometheus text format. Each pipeline (one per kind, on
 * a thread of its own) has its own figures: the hooks find the calling
 * thread's through metrics_pipe_enter(), and the endpoint adds them up. */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

struct contexts_stats;

struct metrics_pipe;

#define METRICS_KINDS 16 /* handler.h's MAX_KINDS */

/* Why a record was dead-lettered, as a small fixed set of classes (the
 * dlq-reason header has the whole message). */
enum metrics_dead {
	MD_UNKNOWN_KIND = 0, /* no handler for its kind header */
	MD_EMPTY,	     /* no value */
	MD_INVALID,	     /* its handler refused it (JSON, schema, UTF-8) */
	MD_REFUSED_BY_POSTGRES, /* traced by bisection: SQLSTATE 22, 23 */
	MD_COUNT
};
extern const char *const metrics_dead_names[];

/* A pipeline's running totals (batch.c's, the handlers', the cache's). */
struct metrics_totals {
	unsigned long long batches, records, saved, skipped, dead;
	unsigned long long dead_by[MD_COUNT]; /* dead, by class */
};
/* The composer's calls by outcome. */
enum metrics_call {
	MC_OK = 0,
	MC_REFUSED,	 /* an empty answer, content_filter */
	MC_BAD_REQUEST,	 /* 400 and other 4xx the message causes */
	MC_RATE_LIMITED, /* 429 */
	MC_SERVER_ERROR, /* 5xx */
	MC_TIMEOUT,
	MC_CONNECT,    /* no answer: connection, TLS, name */
	MC_BAD_ANSWER, /* not a chat completion */
	MC_ACCOUNT,    /* 401, 402, 403: the key or the credit */
	MC_COUNT
};
#define METRICS_MODELS 8
#define METRICS_COMPOSE_BUCKETS 10
extern const char *const metrics_call_names[];
extern const double metrics_compose_le[METRICS_COMPOSE_BUCKETS];

/* The composer's running totals (composer_figures). */
struct metrics_composer {
	bool present;
	unsigned long long calls[MC_COUNT];
	struct {
		char model[96];
		unsigned long long prompt, completion;
	} tokens[METRICS_MODELS]; /* the first models seen; then "other" */
	int n_models;
	unsigned long long le[METRICS_COMPOSE_BUCKETS + 1]; /* last: +Inf */
	unsigned long long lat_count;
	double lat_sum_s;
	double window;
	int inflight;
	unsigned long long composed, failed;
	int64_t held_ms; /* in total, the current hold included */
	bool held;
	char held_why[160];
};

struct metrics_figures {
	struct metrics_totals totals;
	struct metrics_composer composer;
	unsigned long long kind_saved[METRICS_KINDS]; /* by handlers[] index */
	unsigned long long invalidations, keys_removed, owed;
	int assigned;
	int lookups_inflight; /* lead-context lookups */
	bool held;	      /* holding its partitions for the operator */
};
/* A partition's log start, high watermark and position as the pipeline's
 * consumer last heard them (-1 each when unknown). */
typedef void (*metrics_offsets_fn)(void *arg, int32_t partition, int64_t *low,
				   int64_t *high, int64_t *position);

/* A pipeline's figures, registered for the endpoint; kind names it in
 * the per-pipeline series, group (its consumer group; NULL for a pipeline
 * without one, as in replay) in /status, topic (what it reads) in the
 * partitions' series and /status. Freed by metrics_cleanup(). */
struct metrics_pipe *metrics_pipe_new(const char *kind, const char *group,
				      const char *topic);
/* The hooks called on this thread from now on count into p. */
void metrics_pipe_enter(struct metrics_pipe *p);
/* On the pipeline's thread, between batches and while a batch waits: what
 * its batch, handlers and cache count, and through offsets (NULL: none)
 * each assigned partition's watermarks, for the endpoint, which never
 * touches the pipeline's objects itself. */
void metrics_pipe_report(const struct metrics_figures *f,
			 metrics_offsets_fn offsets, void *arg);
void metrics_cleanup(void);

/* The composer is held (401/402/403) in some pipeline: why says so. */
bool metrics_composer_held(char *why, size_t why_size);

/* A batch of records starts (records > 0) or ends (0): /status shows it
 * and its age. */
void metrics_batch_open(size_t records);
/* Pipelines /status shows, and how many hold their partitions paused. */
int metrics_pipelines(int *paused);
/* Every pipeline as /status shows it, added to out as "pipelines". */
void metrics_status(cJSON *out);

/* A batch committed: its size, its duration and its lead-context figures
 * (contexts_stats of the batch; NULL for none). */
void metrics_batch(size_t records, int64_t ms, const struct contexts_stats *s);
/* The configuration in force was loaded (at start, or by a reload): its
 * time is sluice_worker_last_reload_timestamp_seconds. */
void metrics_config_loaded(void);

/* The next offsets a batch committed to PostgreSQL, per partition (the
 * time of the call is the pipeline's last commit). */
void metrics_committed(const int32_t *parts, const int64_t *next, int n);
/* A record handed to a batch: where a partition without a stored offset
 * started, for its lag. */
void metrics_consumed(int32_t partition, int64_t offset);
/* A transient failure that will be retried (a batch, reading offsets). */
void metrics_retry(void);
/* Partitions assigned (offsets = where consumption starts, or
 * RD_KAFKA_OFFSET_INVALID) or revoked. */
void metrics_rebalance(bool assign, const rd_kafka_topic_partition_list_t *p);
/* librdkafka's statistics (stats_cb): which brokers are up. */
void metrics_kafka_stats(const char *json, size_t len);
/* librdkafka's error_cb: all brokers down. */
void metrics_kafka_down(const char *reason);
/* The pipeline's credentials, certificate or an ACL refused (cause "" once
 * it works again); auth: a broker link that comes up cures it. */
void metrics_kafka_denied(const char *cause, bool auth);

/* Kafka as the statistics last described it: false with why when no
 * broker is up. true while nothing is known yet. */
bool metrics_kafka_up(char *why, size_t why_size);

/* Partitions held, by the pipeline that holds most. */
int metrics_assigned(void);
/* Partitions behind and without a commit for longer than stall_ms: how
 * many, each described in why. */
int metrics_stalled(int stall_ms, struct buf *why);
/* Every pipeline's totals added up (as of their last reports). */
void metrics_totals(struct metrics_totals *out);

/* A SIGHUP's outcome (launcher thread, as the endpoint): applied whole,
 * applied but some keys wait for a restart, or refused; and whether the
 * running configuration now differs from the file. */
enum metrics_reload { MR_OK = 0, MR_RESTART_REQUIRED, MR_FAILED, MR_COUNT };
void metrics_reload(enum metrics_reload result, bool restart_pending);

/* The whole exposition. */
void metrics_render(struct buf *out);

#endif
