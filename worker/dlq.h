/* The dead-letter topic: records that can never succeed go there with the
 * reason and their origin in headers, so their partition can move on. */
#ifndef SLUICE_DLQ_H
#define SLUICE_DLQ_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>

#include "../common/config.h"

struct dlq;

/* worker names this worker in each dead letter's dlq-worker header (its
 * group_instance_id, "" for host:pid). */
struct dlq *dlq_new(const char *brokers, const char *topic,
		    const struct cfg_kv *kafka, int partitions,
		    const char *worker, char *errstr, size_t errstr_size);
void dlq_destroy(struct dlq *d);
/* --check-config: the producer's settings through librdkafka, no broker. */
bool dlq_check_config(const char *brokers, const struct cfg_kv *kafka,
		      char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
/* Queues a copy of m with the reason; dlq_flush() waits for them all. */
bool dlq_send(struct dlq *d, const rd_kafka_message_t *m, const char *reason);
/* true when everything queued since the last flush is durable. */
bool dlq_flush(struct dlq *d, int timeout_ms)
    __attribute__((warn_unused_result));

#endif
