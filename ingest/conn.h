/* sluice-ingest's connections: the request deadline (slowloris) and the
 * connection cap, on evhttp's bufferevents. */
#ifndef SLUICE_INGEST_CONN_H
#define SLUICE_INGEST_CONN_H

#include <event2/http.h>
#include <stdbool.h>

#include "ingest.h"

struct conn;

/* Its error answers (evhttp's own, the 408) come from error. */
void conn_setup(struct ingest *ing, conn_error_fn error);
/* http's connections are conn's: plain, or TLS with ing->tls_ctx. Every
 * listener's count against the one max_connections. */
void conn_listen(struct ingest *ing, struct evhttp *http, bool tls);
void conn_apply_settings(struct ingest *ing);
void conn_cleanup(struct ingest *ing);
/* A whole request was read: its deadline stops. False when the
 * connection is over max_connections and the request must get a 503. */
bool conn_request(struct ingest *ing, struct evhttp_request *req);
/* The request is about to be answered: its connection (NULL when it is
 * gone), to pass to conn_answered once the answer is written. Until then
 * output on the connection is known to be sluice's. */
struct conn *conn_answering(struct ingest *ing, struct evhttp_request *req);
/* When the connection's current request was read whole (util_mono_s). */
double conn_started(const struct conn *c);
/* The request was answered: the next one's deadline starts. */
void conn_answered(struct ingest *ing, struct conn *c);

#endif
