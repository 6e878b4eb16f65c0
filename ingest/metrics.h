/* sluice-ingest's counters: a leaf the other modules count into and the
 * /metrics route renders. */
#ifndef SLUICE_INGEST_METRICS_H
#define SLUICE_INGEST_METRICS_H

#include <event2/buffer.h>
#include <event2/http.h>
#include <stdint.h>

struct ingest;

/* An answer with this status was sent to a request for path (NULL: not
 * known, as for an error evhttp answers itself). */
void metrics_response(struct ingest *ing, const char *path, int code);
/* The configuration in force was loaded (at start, or by a reload). */
void metrics_config_loaded(struct ingest *ing);
/* A request's records were confirmed ms after it arrived. */
void metrics_delivery(struct ingest *ing, int64_t ms);
/* The Prometheus text of every figure, appended to out. */
void metrics_render(const struct ingest *ing, struct evbuffer *out);

#endif
