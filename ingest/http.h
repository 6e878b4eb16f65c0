/* sluice-ingest's HTTP server on the event loop. */
#ifndef SLUICE_INGEST_HTTP_H
#define SLUICE_INGEST_HTTP_H

#include <stdbool.h>
#include <stddef.h>

struct ingest;

/* The paths of the two kinds of POST. */
#define WEBHOOK_PREFIX "/v1/webhooks/"
#define CAMPAIGN_PREFIX "/v1/campaigns/"
#define CAMPAIGN_SUFFIX "/batches"

/* Listens on cfg.listen (HTTPS there when a certificate is set without
 * tls_listen) and on cfg.tls_listen (HTTPS, with ing->tls_ctx), and routes
 * every request of both alike; errstr says why not. */
bool http_setup(struct ingest *ing, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
void http_stop_accepting(struct ingest *ing);
/* Answers what still waits (503) and closes every connection. */
void http_cleanup(struct ingest *ing);
/* After a reload: settings evhttp holds (timeouts, body limits). */
void http_apply_settings(struct ingest *ing);

#endif
