/* sluice-ingest's Kafka producer: a record per request (per person for
 * chat), its delivery report handed to ing->delivered on the loop. */
#ifndef SLUICE_INGEST_PUBLISH_H
#define SLUICE_INGEST_PUBLISH_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ingest;
struct pending;
struct source;

bool publish_setup(struct ingest *ing, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
rd_kafka_resp_err_t publish_record(struct ingest *ing, struct pending *p,
				   const struct source *src, const void *body,
				   size_t len, const char *request_id,
				   int64_t received_ms);
void publish_cleanup(struct ingest *ing, int flush_ms);

#endif
