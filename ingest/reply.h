/* sluice-ingest's answers: sluice's JSON for every one (a handshake's
 * challenge and the metrics text aside), counted by status, written
 * through conn.c so the connection's deadline follows them. */
#ifndef SLUICE_INGEST_REPLY_H
#define SLUICE_INGEST_REPLY_H

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <stddef.h>

#include "../common/kinds.h"

struct ingest;

/* A 422 lists at most this many problems (and how many more). */
#define REPLY_MAX_PROBLEMS 100

/* A status's reason phrase ("Accepted"). */
const char *reply_reason(int code);
/* A JSON answer; body is consumed (freed). */
void reply_json(struct ingest *ing, struct evhttp_request *req, int code,
		cJSON *body);
/* {"error": code, "message": message, "path": path?}, with Retry-After
 * on a 429 or 503. */
void reply_error(struct ingest *ing, struct evhttp_request *req, int status,
		 const char *code, const char *message, const char *path);
/* A 413 naming the limit applied; len is 0 when Kafka itself refused. */
void reply_too_large(struct ingest *ing, struct evhttp_request *req,
		     size_t len);
/* A 422 for a body its kind refused: the first problem, or every one for
 * a kind that lists them all. */
void reply_problems(struct ingest *ing, struct evhttp_request *req,
		    const struct kind *k, const struct kind_error *errs,
		    size_t n);
/* An answer that is not JSON (text/plain), counted. */
void reply_text(struct ingest *ing, struct evhttp_request *req, int code,
		const char *content_type, struct evbuffer *body);
/* A whole error answer (status line, headers, JSON body) in buf, for the
 * places that write to a socket or buffer without evhttp's help; returns
 * its length. The caller counts it once sent. */
size_t reply_raw_error(int status, const char *code, const char *message,
		       char *buf, size_t size);
/* A conn_error_fn: sluice's JSON answer for an error evhttp answers
 * itself (status is the one evhttp chose), counted, or for the request
 * deadline's 408 (counted by conn.c once sent). */
size_t reply_evhttp_error(struct ingest *ing, int status, char *buf,
			  size_t size);

#endif
