/* sluice-ingest's gate: the checks every kind's POST passes, cheapest
 * first, before its kind's own step (step.c). */
#ifndef SLUICE_INGEST_GATE_H
#define SLUICE_INGEST_GATE_H

#include <event2/http.h>

struct ingest;
struct source;

/* A POST to src: method (405), the source's rate (429), a body (411, 400)
 * within the limit (413), JSON's content type (415), room in flight
 * (503), the signature the source requires (401, verify.c), UTF-8 and
 * JSON (400); then the kind's step. campaign_id is the path's for campaign
 * batches, NULL otherwise. */
void gate_publish(struct ingest *ing, struct evhttp_request *req,
		  struct source *src, const char *campaign_id);

#endif
