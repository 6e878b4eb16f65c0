/* sluice-ingest's answers. */
#include "reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/access.h"
#include "../common/log.h"
#include "conn.h"
#include "http.h"
#include "ingest.h"
#include "metrics.h"

#define REQUEST_ID_HEADER "X-Request-Id"

void reply_begin(struct evhttp_request *req)
{
	char id[ACCESS_ID_SIZE];

	access_request_id(
	    evhttp_find_header(evhttp_request_get_input_headers(req),
			       REQUEST_ID_HEADER),
	    id, sizeof(id));
	evhttp_add_header(evhttp_request_get_output_headers(req),
			  REQUEST_ID_HEADER, id);
}

const char *reply_request_id(struct evhttp_request *req)
{
	const char *id = evhttp_find_header(
	    evhttp_request_get_output_headers(req), REQUEST_ID_HEADER);

	return id ? id : "-";
}

/* The source a path names, for the access log: a webhook's (as sent,
 * known or not), the campaign source's for a campaign batch. */
static const char *path_source(struct ingest *ing, const char *path, char *buf,
			       size_t size)
{
	const struct source *src;

	if (strncmp(path, WEBHOOK_PREFIX, strlen(WEBHOOK_PREFIX)) == 0) {
		const char *name = path + strlen(WEBHOOK_PREFIX);

		snprintf(buf, size, "%.*s", (int)strcspn(name, "/"), name);
		return buf[0] ? buf : NULL;
	}
	if (strncmp(path, CAMPAIGN_PREFIX, strlen(CAMPAIGN_PREFIX)) == 0 &&
	    (src = ingest_source_of_kind(&ing->cfg, KIND_CAMPAIGN)) != NULL)
		return src->name;
	return NULL;
}

/* The access log line of an answer about to be sent: read now, since
 * evhttp may free the request in evhttp_send_reply. c is the request's
 * connection (NULL when the client is gone, and so is the time it came). */
static void reply_log(struct ingest *ing, struct evhttp_request *req,
		      const struct conn *c, int code, size_t bytes,
		      const char *why)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	char *addr = NULL, src[128];
	ev_uint16_t port = 0;

	/* Nothing to format when the line would not be written. */
	if (ing->cfg.access_log == ACCESS_OFF || LOG_INFO < log_level_current)
		return;
	if (evcon)
		evhttp_connection_get_peer(evcon, &addr, &port);
	access_log(
	    ing->cfg.access_log,
	    &(struct access_entry){
		.client = addr ? addr : "-",
		.method =
		    access_method_name((int)evhttp_request_get_command(req)),
		.path = path ? path : "-",
		.source =
		    path ? path_source(ing, path, src, sizeof(src)) : NULL,
		.status = code,
		.bytes = bytes,
		.ms = c ? (util_mono_s() - conn_started(c)) * 1000.0 : -1.0,
		.request_id = reply_request_id(req),
		.reason = why,
	    });
}

const char *reply_reason(int code)
{
	switch (code) {
	case 200: return "OK";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 411: return "Length Required";
	case 408: return "Request Timeout";
	case 413: return "Payload Too Large";
	case 415: return "Unsupported Media Type";
	case 417: return "Expectation Failed";
	case 429: return "Too Many Requests";
	case 422: return "Unprocessable Entity";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	default: return "Error";
	}
}

/* RFC 7231's Date, formatted once a second rather than by libevent for
 * every answer (it adds its own only when the header is absent). */
static const char *http_date(void)
{
	static char date[64];
	static time_t last;
	time_t now = time(NULL);

	if (now != last) {
		struct tm tm;

		gmtime_r(&now, &tm);
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
		last = now;
	}
	return date;
}

/* A HEAD answer has the headers a GET would get and no body: a body would
 * be read as the start of the next response on a kept-alive connection.
 * The connection is marked answered only after evhttp has written the
 * answer (conn.c tells sluice's output from evhttp's own that way); it is
 * looked up first, and the answer counted under the request's path,
 * because evhttp frees a request whose connection is gone in
 * evhttp_send_reply. */
static void reply_send(struct ingest *ing, struct evhttp_request *req, int code,
		       const char *reason, struct evbuffer *body,
		       const char *why)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct conn *c = conn_answering(ing, req);
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);

	metrics_response(ing, uri ? evhttp_uri_get_path(uri) : NULL, code);
	reply_log(ing, req, c, code,
		  evhttp_request_get_command(req) == EVHTTP_REQ_HEAD
		      ? 0
		      : evbuffer_get_length(body),
		  why);
	evhttp_add_header(out, "Date", http_date());
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		char len[24];

		snprintf(len, sizeof(len), "%zu", evbuffer_get_length(body));
		evhttp_add_header(out, "Content-Length", len);
		evhttp_send_reply(req, code, reason, NULL);
	} else {
		evhttp_send_reply(req, code, reason, body);
	}
	conn_answered(ing, c);
}

size_t reply_raw_error(struct ingest *ing, int status, const char *code,
		       const char *message, char *buf, size_t size)
{
	cJSON *o = cJSON_CreateObject();
	char body[768], id[ACCESS_ID_SIZE];
	int n;

	cJSON_AddStringToObject(o, "error", code);
	cJSON_AddStringToObject(o, "message", message);
	if (!cJSON_PrintPreallocated(o, body, (int)sizeof(body) - 1, 0))
		snprintf(body, sizeof(body), "{\"error\":\"%s\"}", code);
	cJSON_Delete(o);
	/* A request that never reached sluice whole: its id is a new one. */
	access_request_id(NULL, id, sizeof(id));
	n = snprintf(buf, size,
		     "HTTP/1.1 %d %s\r\n"
		     "Content-Type: application/json\r\n"
		     "Connection: close\r\n"
		     "Date: %s\r\n"
		     "X-Request-Id: %s\r\n"
		     "Content-Length: %zu\r\n\r\n%s\n",
		     status, reply_reason(status), http_date(), id,
		     strlen(body) + 1, body);
	if (n < 0 || (size_t)n >= size) /* the body is bounded above */
		abort();
	log_debug("%d %s: %s", status, code, message);
	/* evhttp's own errors and the 408: no request to read a client,
	 * method or path from. */
	access_log(ing->cfg.access_log, &(struct access_entry){
					    .client = "-",
					    .method = "-",
					    .path = "-",
					    .status = status,
					    .bytes = strlen(body) + 1,
					    .ms = -1.0,
					    .request_id = id,
					    .reason = code,
					});
	return (size_t)n;
}

/* evhttp answers these itself, before any handler of sluice's sees the
 * request (see conn.c); only the status tells which case it was. */
size_t reply_evhttp_error(struct ingest *ing, int status, char *buf,
			  size_t size)
{
	char msg[320];

	if (status == 408) /* conn.c counts it once it is sent */
		return reply_raw_error(ing, 408, "request_timeout",
				       "the request was not received whole "
				       "within request_timeout_s",
				       buf, size);
	metrics_response(ing, NULL, status);
	switch (status) {
	case 400:
		return reply_raw_error(
		    ing, 400, "bad_request",
		    "the request could not be parsed: a malformed request "
		    "line, header, Content-Length or Transfer-Encoding, or a "
		    "Content-Length beside a Transfer-Encoding",
		    buf, size);
	case 413:
		/* libevent also ends a chunked body whose chunk size does
		 * not parse this way. */
		snprintf(msg, sizeof(msg),
			 "the declared body length (Content-Length or a chunk "
			 "size) is over %lld bytes, the most sluice-ingest "
			 "reads (4 x max_body_bytes + 65536), or a chunk size "
			 "is malformed; bodies over %d bytes are refused in "
			 "any case",
			 (long long)ing->cfg.max_body_bytes * 4 + 65536,
			 ing->cfg.max_body_bytes < ing->max_record_bytes
			     ? ing->cfg.max_body_bytes
			     : ing->max_record_bytes);
		return reply_raw_error(ing, 413, "payload_too_large", msg, buf,
				       size);
	case 417:
		return reply_raw_error(ing, 417, "expectation_failed",
				       "the only Expect supported is "
				       "100-continue",
				       buf, size);
	case 501:
		return reply_raw_error(
		    ing, 501, "not_implemented",
		    "unknown or unsupported method; "
		    "sluice-ingest serves GET, HEAD and POST",
		    buf, size);
	default:
		snprintf(msg, sizeof(msg), "the request was refused (%d)",
			 status);
		return reply_raw_error(ing, status, "bad_request", msg, buf,
				       size);
	}
}

/* Every JSON answer: printed into a stack buffer when it fits (they are
 * small), through one evbuffer the loop reuses (evhttp_send_reply moves
 * its contents out). Runs on the event loop thread only. */
void reply_json(struct ingest *ing, struct evhttp_request *req, int code,
		cJSON *body)
{
	static struct evbuffer *out;
	char stack[2048];
	char *text = NULL;
	const cJSON *why = cJSON_GetObjectItemCaseSensitive(body, "error");

	if (!out)
		out = evbuffer_new();
	/* A 204 (success_status) has no body, so no Content-Type either
	 * (RFC 9110 15.3.5). */
	if (code != 204) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Content-Type", "application/json");
		if (cJSON_PrintPreallocated(body, stack, (int)sizeof(stack) - 1,
					    0)) {
			evbuffer_add(out, stack, strlen(stack));
			evbuffer_add(out, "\n", 1);
		} else if ((text = cJSON_PrintUnformatted(body)) != NULL) {
			evbuffer_add(out, text, strlen(text));
			evbuffer_add(out, "\n", 1);
		}
	}
	reply_send(ing, req, code, reply_reason(code), out,
		   code >= 400 && cJSON_IsString(why) ? why->valuestring
						      : NULL);
	evbuffer_drain(out, evbuffer_get_length(out));
	cJSON_free(text);
	cJSON_Delete(body);
}

void reply_error(struct ingest *ing, struct evhttp_request *req, int status,
		 const char *code, const char *message, const char *path)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "error", code);
	cJSON_AddStringToObject(o, "message", message);
	if (path)
		cJSON_AddStringToObject(o, "path", path);
	if (status == 503 || status == 429) {
		char ra[16];

		snprintf(ra, sizeof(ra), "%d",
			 status == 429 && ing->retry_after_429 > 0
			     ? ing->retry_after_429
			     : ing->cfg.retry_after_s);
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Retry-After", ra);
	}
	log_debug("%d %s: %s%s%s", status, code, message, path ? " at " : "",
		  path ? path : "");
	reply_json(ing, req, status, o);
}

/* 413 naming the limit that was applied, its figure and where it comes
 * from: max_body_bytes, or Kafka's record limit when that is lower (the
 * producer's message.max.bytes or the topic's max.message.bytes, less
 * room for the key and headers). len is 0 when Kafka itself refused. */
void reply_too_large(struct ingest *ing, struct evhttp_request *req, size_t len)
{
	char msg[300];

	if (len == 0)
		snprintf(msg, sizeof(msg),
			 "Kafka refused the event as larger than it takes "
			 "(%s is %ld bytes, including the key and headers)",
			 ing->max_record_whose, ing->max_record_kafka);
	else if (ing->cfg.max_body_bytes <= ing->max_record_bytes)
		snprintf(msg, sizeof(msg),
			 "the body (%zu bytes) exceeds max_body_bytes (%d)",
			 len, ing->cfg.max_body_bytes);
	else
		snprintf(msg, sizeof(msg),
			 "the body (%zu bytes) exceeds %d bytes, the most "
			 "Kafka takes: %s is %ld, less %d bytes kept for the "
			 "key and headers (max_body_bytes is %d)",
			 len, ing->max_record_bytes, ing->max_record_whose,
			 ing->max_record_kafka,
			 (int)(ing->max_record_kafka - ing->max_record_bytes),
			 ing->cfg.max_body_bytes);
	reply_error(ing, req, 413, "payload_too_large", msg, NULL);
}

void reply_problems(struct ingest *ing, struct evhttp_request *req,
		    const struct kind *k, const struct kind_error *errs,
		    size_t n)
{
	char full[600];
	cJSON *o, *list;

	if (!k->all_errors) {
		snprintf(full, sizeof(full), "%s %s", errs[0].path,
			 errs[0].message);
		reply_error(ing, req, 422, "schema_violation", full,
			    errs[0].path);
		return;
	}
	o = cJSON_CreateObject();
	list = cJSON_AddArrayToObject(o, "errors");
	snprintf(full, sizeof(full), "%s %s%s", errs[0].path, errs[0].message,
		 n > 1 ? " (and more: see errors)" : "");
	cJSON_AddStringToObject(o, "error", "schema_violation");
	cJSON_AddStringToObject(o, "message", full);
	cJSON_AddStringToObject(o, "path", errs[0].path);
	for (size_t i = 0; i < n && i < REPLY_MAX_PROBLEMS; i++) {
		cJSON *e = cJSON_CreateObject();

		if (errs[i].index >= 0)
			cJSON_AddNumberToObject(e, "index", errs[i].index);
		cJSON_AddStringToObject(e, "path", errs[i].path);
		cJSON_AddStringToObject(e, "message", errs[i].message);
		cJSON_AddItemToArray(list, e);
	}
	if (n > REPLY_MAX_PROBLEMS)
		cJSON_AddNumberToObject(o, "more_errors",
					(double)(n - REPLY_MAX_PROBLEMS));
	reply_json(ing, req, 422, o);
}

void reply_text(struct ingest *ing, struct evhttp_request *req, int code,
		const char *content_type, struct evbuffer *body)
{
	evhttp_add_header(evhttp_request_get_output_headers(req),
			  "Content-Type", content_type);
	reply_send(ing, req, code, reply_reason(code), body, NULL);
}
