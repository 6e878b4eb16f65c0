/* sluice-ingest's step of each kind: its checks (JSON Schema, then its
 * row's own, common/kinds.h) and its records, for a body the gate let
 * through; Meta's subscription handshake for a kind that answers it. */
#ifndef SLUICE_INGEST_STEP_H
#define SLUICE_INGEST_STEP_H

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <stddef.h>

struct ingest;
struct source;

/* doc is consumed; whid is the sender's webhook id, or NULL. */
void step_publish(struct ingest *ing, struct evhttp_request *req,
		  const struct source *src, cJSON *doc, const char *campaign_id,
		  const char *whid, const char *data, size_t len);
/* GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C: 200 with C
 * when T is the source's verify_token. */
void step_handshake(struct ingest *ing, struct evhttp_request *req,
		    const struct source *src);

#endif
