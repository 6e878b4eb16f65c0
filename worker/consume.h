/* The Kafka consumer: group membership, cooperative rebalancing, seeking to
 * the offsets PostgreSQL holds, and forming batches. */
#ifndef SLUICE_CONSUME_H
#define SLUICE_CONSUME_H

#include <event2/event.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

#include "pgsink.h"
#include "settings.h"

struct consumer;

/* Processes msgs[0..n) completely (retrying transient failures) before it
 * returns; the consumer destroys the messages afterwards. arg is
 * consume_new's. */
typedef void (*consume_flush_fn)(void *arg, rd_kafka_message_t **msgs,
				 size_t n);

/* Waits ms between retries without blocking the worker's event loop. */
typedef void (*consume_wait_fn)(void *arg, int ms);

/* --check-config: the consumer's settings through librdkafka, no broker. */
bool consume_check_config(const struct worker_config *cfg, char *errstr,
			  size_t errstr_size)
    __attribute__((warn_unused_result));
struct consumer *consume_new(const struct worker_config *cfg, struct pgsink *ps,
			     volatile const int *stop, consume_flush_fn flush,
			     consume_wait_fn wait, void *arg, char *errstr,
			     size_t errstr_size);
/* Polls up to max records: blocks up to timeout_ms for the first, then
 * takes what is already fetched (plus batch_wait_ms). Processes the batch
 * through the flush callback; returns how many records it had. */
size_t consume_batch(struct consumer *c, int timeout_ms);
/* For a batch that runs long (its lookups, its retries), called from it
 * at most about once a second: pauses the assigned partitions for the
 * rest of the batch (resumed when the flush callback returns, or by the
 * next consume_batch()) and polls the consumer once, which tells
 * librdkafka the worker is alive (kafka.max.poll.interval.ms) and serves
 * rebalances and errors. A record it is handed anyway starts the next
 * batch. Does nothing inside a poll's own callbacks. */
void consume_serve(struct consumer *c);
/* Tells Kafka the committed positions too, for lag monitoring only (the
 * worker trusts PostgreSQL's copy); sent at most once a second, and on
 * revocation and close. */
void consume_commit_async(struct consumer *c, const int32_t *parts,
			  const int64_t *next_offsets, int n);
int consume_assigned(const struct consumer *c);
/* What librdkafka last heard of a partition, without a round trip: its
 * watermarks and the consumer's position; -1 where unknown. */
void consume_offsets(const struct consumer *c, int32_t partition, int64_t *low,
		     int64_t *high, int64_t *position);
/* Makes the consumer queue wake base (an event on a pipe librdkafka writes
 * to), so the worker can wait on the loop instead of in a blocking poll;
 * then consume_batch(c, 0) when the loop returns. */
bool consume_watch(struct consumer *c, struct event_base *base, char *errstr,
		   size_t errstr_size) __attribute__((warn_unused_result));
/* A fatal consumer error (e.g. fenced by another worker with the same
 * group_instance_id): the worker should exit. */
bool consume_fatal(const struct consumer *c);
/* Moves on every assignment and revocation, so a caller can tell that the
 * partitions held changed without a callback into it. */
unsigned consume_assign_gen(const struct consumer *c);
/* The topic's partitions held now, into *parts (malloc'd); their number. */
int consume_assignment(struct consumer *c, int32_t **parts);
void consume_close(struct consumer *c);

#endif
