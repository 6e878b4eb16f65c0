/* The worker's counters for GET /metrics: what the batch, the consumer and
 * the cache report through one-line hooks, plus what they already count,
 * rendered in the Prometheus text format. Everything runs on the worker
 * thread, so nothing here needs a lock. */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

struct batch;
struct cache;
struct consumer;
struct contexts_stats;

void metrics_cleanup(void);

/* A batch committed: its size, its duration and its lead-context figures
 * (contexts_stats of the batch; NULL for none). */
void metrics_batch(size_t records, int64_t ms, const struct contexts_stats *s);
/* The next offsets a batch committed to PostgreSQL, per partition. */
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

/* Kafka as the statistics last described it: false with why when no
 * broker is up. true while nothing is known yet. */
bool metrics_kafka_up(char *why, size_t why_size);

/* The whole exposition. */
void metrics_render(struct buf *out, const struct batch *b,
		    const struct consumer *c, const struct cache *cache);

#endif
