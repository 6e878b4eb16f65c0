/* sluice-ingest's requests waiting for Kafka: each record a struct
 * pending (ingest.h) on the process's list, answered from its delivery
 * report or at its deadline, whichever comes first. */
#ifndef SLUICE_INGEST_PENDING_H
#define SLUICE_INGEST_PENDING_H

#include <librdkafka/rdkafka.h>

struct ingest;
struct pending;

/* p joins the list of records waiting, and its deadline
 * (delivery_timeout_ms) starts. */
void pending_link(struct ingest *ing, struct pending *p);
/* p leaves the list and is freed. */
void pending_destroy(struct pending *p);
/* Answers the request behind p after its delivery report (loop thread);
 * frees p. publish.c calls it through ing->delivered (main.c wires it). */
void pending_delivered(struct pending *p, rd_kafka_resp_err_t err);
/* p of a group was never queued: it counts as reported, failed; the group
 * is answered (and freed) when p was its last record. */
void pending_group_failed(struct ingest *ing, struct pending *p,
			  rd_kafka_resp_err_t err);
/* Shutting down: every request still waiting gets its 503 now, and the
 * reports that come later touch no request. */
void pending_abandon_all(struct ingest *ing);

#endif
