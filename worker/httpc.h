/* The worker's HTTP client, shared by the services that call out (the lead
 * context source, the composer): http:// and https:// (libevent's OpenSSL
 * bufferevents, the peer's certificate and name verified), names resolved
 * by evdns on the event_base (never a blocking getaddrinfo), kept-alive
 * connections reused per host, and a deadline per call. Everything runs
 * on the one event_base it was made for. */
#ifndef SLUICE_HTTPC_H
#define SLUICE_HTTPC_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

struct httpc;
struct httpc_call;

/* What a call ended with. status 0: no HTTP answer; error says why
 * ("timeout", "connect: ...", "tls: ...", "resolve: ..."). */
struct httpc_resp {
	int status;
	const char *error;
	const char *body; /* NUL-terminated; valid during the callback */
	size_t len;
	void *priv_; /* the response's headers, for httpc_resp_header() */
};

/* A response header's value (case-insensitive name), NULL if absent. */
const char *httpc_resp_header(const struct httpc_resp *r, const char *name);

/* Called once per call, on the event_base, unless the call was cancelled
 * first. */
typedef void (*httpc_done_fn)(void *arg, const struct httpc_resp *r);

/* max_per_host: connections kept open to one scheme+host+port (calls
 * beyond it wait for a free one). ca_file: NULL or "" for the system's
 * trust store. */
struct httpc *httpc_new(struct event_base *base, int max_per_host,
			const char *ca_file, char *errstr, size_t errstr_size);
/* Cancels every call still running (their callbacks are not called). */
void httpc_destroy(struct httpc *h);

/* One request header, "Name" and "value". */
struct httpc_header {
	const char *name;
	const char *value;
};

/* Starts a call: method "GET" or "POST", an absolute http(s) URL, n_headers
 * extra request headers (Host, Content-Length and Connection are the
 * client's), body (may be NULL). The deadline covers everything: name,
 * connection, TLS handshake, request and the whole answer. Returns NULL
 * when the call cannot even start (errstr says why; fn is not called). */
struct httpc_call *
httpc_request(struct httpc *h, const char *method, const char *url,
	      const struct httpc_header *headers, size_t n_headers,
	      const char *body, size_t body_len, int timeout_ms,
	      httpc_done_fn fn, void *arg, char *errstr, size_t errstr_size);
/* Abandons a call; its callback is never called. */
void httpc_cancel(struct httpc_call *c);

/* Connections open now (for tests and metrics). */
int httpc_open_connections(const struct httpc *h);

#endif
