/* The HTTP side of sluice-ingest: routing, validation, answers. */
#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <openssl/crypto.h>
#include <event2/keyvalq_struct.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>
#include <unistd.h>

#include "../common/campaign.h"
#include "../common/kinds.h"
#include "../common/log.h"
#include "../common/schema.h"
#include "../common/validate.h"
#include "../common/util.h"
#include "ingest.h"
#include "verify.h"

#define WEBHOOK_PREFIX "/v1/webhooks/"
#define CAMPAIGN_PREFIX "/v1/campaigns/"
#define CAMPAIGN_SUFFIX "/batches"
#define MAX_REPORTED_ERRORS 100
#define MAX_ID_LEN 256

static enum status_slot status_slot(int code)
{
	switch (code) {
	case 200: return ST_200;
	case 202: return ST_202;
	case 400: return ST_400;
	case 401: return ST_401;
	case 404: return ST_404;
	case 405: return ST_405;
	case 408: return ST_408;
	case 411: return ST_411;
	case 413: return ST_413;
	case 415: return ST_415;
	case 422: return ST_422;
	case 429: return ST_429;
	case 500: return ST_500;
	case 503: return ST_503;
	default: return ST_OTHER;
	}
}

static const char *reason_phrase(int code)
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
 * looked up first because evhttp frees a request whose connection is gone
 * in evhttp_send_reply. */
static void send_reply(struct ingest *ing, struct evhttp_request *req, int code,
		       const char *reason, struct evbuffer *body)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct conn *c = conn_answering(ing, req);

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

size_t http_raw_error(int status, const char *code, const char *message,
		      char *buf, size_t size)
{
	cJSON *o = cJSON_CreateObject();
	char body[768];
	int n;

	cJSON_AddStringToObject(o, "error", code);
	cJSON_AddStringToObject(o, "message", message);
	if (!cJSON_PrintPreallocated(o, body, (int)sizeof(body) - 1, 0))
		snprintf(body, sizeof(body), "{\"error\":\"%s\"}", code);
	cJSON_Delete(o);
	n = snprintf(buf, size,
		     "HTTP/1.1 %d %s\r\n"
		     "Content-Type: application/json\r\n"
		     "Connection: close\r\n"
		     "Date: %s\r\n"
		     "Content-Length: %zu\r\n\r\n%s\n",
		     status, reason_phrase(status), http_date(),
		     strlen(body) + 1, body);
	if (n < 0 || (size_t)n >= size) /* the body is bounded above */
		abort();
	log_debug("%d %s: %s", status, code, message);
	return (size_t)n;
}

/* evhttp answers these itself, before any handler of sluice's sees the
 * request (see conn.c); only the status tells which case it was. */
size_t http_evhttp_error(struct ingest *ing, int status, char *buf, size_t size)
{
	char msg[320];

	if (status == 408) /* conn.c counts it once it is sent */
		return http_raw_error(408, "request_timeout",
				      "the request was not received whole "
				      "within request_timeout_s",
				      buf, size);
	ing->m.responses[status_slot(status)]++;
	switch (status) {
	case 400:
		return http_raw_error(
		    400, "bad_request",
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
		return http_raw_error(413, "payload_too_large", msg, buf, size);
	case 417:
		return http_raw_error(417, "expectation_failed",
				      "the only Expect supported is "
				      "100-continue",
				      buf, size);
	case 501:
		return http_raw_error(501, "not_implemented",
				      "unknown or unsupported method; "
				      "sluice-ingest serves GET, HEAD and POST",
				      buf, size);
	default:
		snprintf(msg, sizeof(msg), "the request was refused (%d)",
			 status);
		return http_raw_error(status, "bad_request", msg, buf, size);
	}
}

/* Every JSON answer: printed into a stack buffer when it fits (they are
 * small), through one evbuffer the loop reuses (evhttp_send_reply moves
 * its contents out). Runs on the event loop thread only. */
static void reply_json(struct ingest *ing, struct evhttp_request *req, int code,
		       cJSON *body)
{
	static struct evbuffer *out;
	char stack[2048];
	char *text = NULL;

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
	send_reply(ing, req, code, reason_phrase(code), out);
	evbuffer_drain(out, evbuffer_get_length(out));
	cJSON_free(text);
	cJSON_Delete(body);
	ing->m.responses[status_slot(code)]++;
}

static void reply_error(struct ingest *ing, struct evhttp_request *req,
			int status, const char *code, const char *message,
			const char *path)
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
static void reply_too_large(struct ingest *ing, struct evhttp_request *req,
			    size_t len)
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

static void pending_destroy(struct pending *p)
{
	struct ingest *ing = p->ing;

	if (p->prev)
		p->prev->next = p->next;
	else
		ing->pending = p->next;
	if (p->next)
		p->next->prev = p->prev;
	ing->inflight--;
	if (p->deadline)
		event_free(p->deadline);
	free(p->id);
	free(p->key);
	free(p->event_type);
	free(p->campaign_id);
	free(p);
}

static void observe_delivery(struct ingest *ing, int64_t ms)
{
	static const int64_t bounds[] = {1, 2, 5, 10, 25, 50, 100};
	int i = 0;

	while (i < 7 && ms > bounds[i])
		i++;
	ing->m.delivery_ms_buckets[i]++;
	ing->m.delivery_ms_sum += (uint64_t)ms;
}

/* The group's answer once its last record reported. */
static void group_reported(struct ingest *ing, struct pending *p,
			   rd_kafka_resp_err_t err)
{
	struct pgroup *g = p->group;

	if (err && !g->err)
		g->err = err;
	if (--g->left > 0)
		return;
	if (g->req) {
		if (g->err) {
			char msg[256];

			snprintf(msg, sizeof(msg),
				 "not every record of the webhook could be "
				 "stored durably: %s; retry it whole",
				 rd_kafka_err2str(g->err));
			reply_error(ing, g->req, 503, "unavailable", msg, NULL);
		} else {
			cJSON *o = cJSON_CreateObject();

			cJSON_AddStringToObject(o, "status", "accepted");
			cJSON_AddStringToObject(o, "id", p->id);
			cJSON_AddNumberToObject(o, "records", g->n);
			cJSON_AddItemToObject(o, "senders", g->senders);
			g->senders = NULL; /* owned by o now */
			cJSON_AddStringToObject(o, "eventType", p->event_type);
			observe_delivery(ing, util_mono_ms() - p->started_ms);
			reply_json(ing, g->req, p->success_status, o);
		}
	} else {
		ing->m.late_deliveries++;
	}
	cJSON_Delete(g->senders);
	free(g);
}

void http_delivered(struct pending *p, rd_kafka_resp_err_t err)
{
	struct ingest *ing = p->ing;

	if (p->group) {
		group_reported(ing, p, err);
	} else if (!p->req && !p->deadline) {
		/* answered 503 at its deadline; if Kafka took it after all,
		 * the sender's retry is de-duplicated downstream */
		ing->m.late_deliveries++;
	} else if (p->req) {
		if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
			reply_too_large(ing, p->req, 0);
		} else if (err) {
			char msg[256];

			snprintf(msg, sizeof(msg),
				 "the event could not be stored durably: %s; "
				 "retry later",
				 rd_kafka_err2str(err));
			reply_error(ing, p->req, 503, "unavailable", msg, NULL);
		} else {
			cJSON *o = cJSON_CreateObject();

			cJSON_AddStringToObject(o, "status", "accepted");
			cJSON_AddStringToObject(o, "id", p->id);
			cJSON_AddStringToObject(o, p->key_name, p->key);
			cJSON_AddStringToObject(o, "eventType", p->event_type);
			observe_delivery(ing, util_mono_ms() - p->started_ms);
			reply_json(ing, p->req, p->success_status, o);
		}
	}
	pending_destroy(p);
}

/* Loop timer: Kafka has not confirmed within delivery_timeout_ms. The
 * request is answered now; the record's report, when it comes, finds the
 * pending without a request and is only counted. */
static void handle_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;

	(void)fd;
	(void)what;
	struct evhttp_request **req = p->group ? &p->group->req : &p->req;

	event_free(p->deadline);
	p->deadline = NULL;
	if (*req)
		reply_error(p->ing, *req, 503, "unavailable",
			    "Kafka did not confirm the event in time; retry "
			    "later",
			    NULL);
	*req = NULL;
}

static bool content_type_json(const char *ct)
{
	size_t n;
	const char *semi;

	if (!ct)
		return false;
	while (*ct == ' ')
		ct++;
	semi = strchr(ct, ';');
	n = semi ? (size_t)(semi - ct) : strlen(ct);
	while (n > 0 && ct[n - 1] == ' ')
		n--;
	if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
		return true;
	/* application/something+json */
	return n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
	       strncasecmp(ct + n - 5, "+json", 5) == 0;
}

static bool id_acceptable(const char *id)
{
	size_t n = strlen(id);

	if (n == 0 || n > MAX_ID_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)id[i] < 0x21 || (unsigned char)id[i] > 0x7e)
			return false;
	return true;
}

/* A body its kind refused: 422 with the first problem, or with every one
 * (errors[]) for a kind that lists them all. */
static void reply_problems(struct ingest *ing, struct evhttp_request *req,
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
	for (size_t i = 0; i < n && i < MAX_REPORTED_ERRORS; i++) {
		cJSON *e = cJSON_CreateObject();

		if (errs[i].index >= 0)
			cJSON_AddNumberToObject(e, "index", errs[i].index);
		cJSON_AddStringToObject(e, "path", errs[i].path);
		cJSON_AddStringToObject(e, "message", errs[i].message);
		cJSON_AddItemToArray(list, e);
	}
	if (n > MAX_REPORTED_ERRORS)
		cJSON_AddNumberToObject(o, "more_errors",
					(double)(n - MAX_REPORTED_ERRORS));
	reply_json(ing, req, 422, o);
}

/* The checks of the source's kind: its JSON Schema, then its own. false
 * when the body was refused (answered). */
static bool check_kind(struct ingest *ing, struct evhttp_request *req,
		       const struct source *src, const cJSON *doc,
		       const char *campaign_id, struct kind_route *route)
{
	const struct kind *k = src->kind;
	struct kind_args args = {.path_id = campaign_id,
				 .max_items =
				     (size_t)ing->cfg.campaign_max_messages};
	size_t max = k->all_errors ? MAX_REPORTED_ERRORS : 1, n = 0;
	struct kind_error *errs = xcalloc(max, sizeof(*errs));
	bool ok = true;

	if (src->schema &&
	    !schema_validate(src->schema, doc, errs[0].path,
			     sizeof(errs[0].path), errs[0].message,
			     sizeof(errs[0].message))) {
		errs[0].index = -1;
		n = 1;
		ok = false;
	}
	if (ok)
		ok = k->check(doc, &args, route, errs, max, &n);
	if (!ok)
		reply_problems(ing, req, k, errs, n);
	free(errs);
	return ok;
}

static void pending_link(struct ingest *ing, struct pending *p)
{
	struct timeval tv = util_ms_tv(ing->cfg.delivery_timeout_ms);

	p->started_ms = util_mono_ms();
	p->next = ing->pending;
	if (p->next)
		p->next->prev = p;
	ing->pending = p;
	ing->inflight++;
	p->deadline = evtimer_new(ing->base, handle_deadline, p);
	evtimer_add(p->deadline, &tv);
}

#define MAX_KEYS 1000

/* A body of a kind with one record per key (chat: per person, key and
 * chat-sender header = the person's wa_id; value = the body as received),
 * answered when all are durable; if any is not, 503 and the sender sends
 * the body again. */
static void publish_each(struct ingest *ing, struct evhttp_request *req,
			 const struct source *src, const cJSON *doc,
			 const struct kind_route *route, const char *whid,
			 const char *data, size_t len)
{
	static const char *senders[MAX_KEYS];
	char request_id[40], gen_id[40];
	size_t n;
	struct pgroup *g;

	n = src->kind->keys(doc, senders, MAX_KEYS);
	if (n > MAX_KEYS) {
		reply_error(ing, req, 422, "schema_violation",
			    "more than 1000 people in one webhook", "$.entry");
		return;
	}
	if (n == 0) { /* nothing for sluice (another field): acknowledged */
		cJSON *o = cJSON_CreateObject();

		cJSON_AddStringToObject(o, "status", "accepted");
		cJSON_AddNumberToObject(o, "records", 0);
		cJSON_AddItemToObject(o, "senders", cJSON_CreateArray());
		reply_json(ing, req, src->success_status, o);
		return;
	}
	if (!whid || !id_acceptable(whid)) {
		util_random_id(gen_id, sizeof(gen_id), "wh_");
		whid = gen_id;
	}
	util_random_id(request_id, sizeof(request_id), "req_");
	g = xcalloc(1, sizeof(*g));
	g->req = req;
	g->n = (int)n;
	g->left = (int)n;
	g->senders = cJSON_CreateArray();
	for (size_t i = 0; i < n; i++) {
		struct pending *p = xcalloc(1, sizeof(*p));
		rd_kafka_resp_err_t err;

		cJSON_AddItemToArray(g->senders,
				     cJSON_CreateString(senders[i]));
		p->ing = ing;
		p->group = g;
		p->key_header = src->kind->key_header;
		p->success_status = src->success_status;
		p->id = xstrdup(whid);
		p->key = xstrdup(senders[i]);
		p->key_name = src->kind->key_name;
		p->event_type = xstrdup(route->event_type);
		pending_link(ing, p);
		err = publish_record(ing, p, src, data, len, request_id,
				     util_now_ms());
		if (err) {
			/* Not queued: counts as reported, failed. */
			group_reported(ing, p, err);
			pending_destroy(p);
			if (g->left == 0)
				return; /* answered and freed */
		}
	}
}

/* Standard Webhooks' three headers. Senders built on Svix, where the
 * scheme comes from, name them svix-id, svix-timestamp and svix-signature
 * with the same meaning and signature; those are taken, as a set, when
 * webhook-id is absent (as Svix's own verifiers do). */
struct sw_headers {
	const char *id, *timestamp, *signature;
};

static void sw_headers_find(struct evkeyvalq *in, struct sw_headers *h)
{
	h->id = evhttp_find_header(in, "webhook-id");
	if (h->id || !(h->id = evhttp_find_header(in, "svix-id"))) {
		h->timestamp = evhttp_find_header(in, "webhook-timestamp");
		h->signature = evhttp_find_header(in, "webhook-signature");
	} else {
		h->timestamp = evhttp_find_header(in, "svix-timestamp");
		h->signature = evhttp_find_header(in, "svix-signature");
	}
}

/* Every POST that becomes a Kafka record: the checks all kinds share,
 * cheapest first, then the kind's own, then the record. campaign_id is the
 * path's for campaign batches, NULL otherwise. */
static void handle_publish(struct ingest *ing, struct evhttp_request *req,
			   struct source *src, const char *campaign_id)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evbuffer *body = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(body);
	struct sw_headers sw;
	const char *whid;
	char path[256], msg[256], request_id[40], gen_id[40];
	const char *data;
	long bad_at = 0;
	struct kind_route route;
	struct pending *p;
	rd_kafka_resp_err_t err;
	cJSON *doc;

	sw_headers_find(in, &sw);
	whid = sw.id;
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Allow", "POST");
		reply_error(ing, req, 405, "method_not_allowed", "use POST",
			    NULL);
		return;
	}
	{
		int wait_s = 0;

		if (!source_take(src, util_mono_ms(), &wait_s)) {
			src->limited++;
			ing->retry_after_429 = wait_s;
			reply_error(ing, req, 429, "rate_limited",
				    "this source's request rate is over its "
				    "limit; retry later",
				    NULL);
			ing->retry_after_429 = 0;
			return;
		}
	}
	if (len == 0) {
		if (!evhttp_find_header(in, "Content-Length") &&
		    !evhttp_find_header(in, "Transfer-Encoding"))
			reply_error(
			    ing, req, 411, "length_required",
			    "a JSON body with Content-Length is required",
			    NULL);
		else
			reply_error(ing, req, 400, "empty_body",
				    "the body is empty", NULL);
		return;
	}
	if (len > (size_t)ing->cfg.max_body_bytes ||
	    len > (size_t)ing->max_record_bytes) {
		reply_too_large(ing, req, len);
		return;
	}
	if (!content_type_json(evhttp_find_header(in, "Content-Type"))) {
		reply_error(ing, req, 415, "unsupported_media_type",
			    "Content-Type must be application/json", NULL);
		return;
	}
	if (ing->draining || ing->inflight >= ing->cfg.max_inflight) {
		reply_error(ing, req, 503, "unavailable",
			    ing->draining
				? "shutting down; retry later"
				: "too many requests in flight; retry later",
			    NULL);
		return;
	}
	data = (const char *)evbuffer_pullup(body, -1);
	if (src->signature == SIG_STANDARD_WEBHOOKS) {
		enum verify_result vr = verify_signature(
		    src->key, src->key_len, whid, sw.timestamp, sw.signature,
		    data, len, util_now_ms() / 1000);

		if (vr != VERIFY_OK) {
			reply_error(ing, req, 401, "bad_signature",
				    verify_result_str(vr), NULL);
			return;
		}
	}
	if (src->signature == SIG_META &&
	    !verify_meta(src->key, src->key_len,
			 evhttp_find_header(in, "X-Hub-Signature-256"), data,
			 len)) {
		reply_error(ing, req, 401, "bad_signature",
			    "X-Hub-Signature-256 is missing or does not match "
			    "the body",
			    NULL);
		return;
	}
	if (!util_utf8_valid(data, len)) {
		reply_error(ing, req, 400, "malformed_json",
			    "the body is not valid UTF-8", NULL);
		return;
	}
	doc = json_parse_whole(data, len, &bad_at);
	if (!doc) {
		snprintf(msg, sizeof(msg), "malformed JSON at byte %ld",
			 bad_at);
		reply_error(ing, req, 400, "malformed_json", msg, NULL);
		return;
	}
	if (!json_check(data, len, doc, path, sizeof(path), msg, sizeof(msg))) {
		char full[600];

		snprintf(full, sizeof(full), "%s: %s", path, msg);
		cJSON_Delete(doc);
		reply_error(ing, req, 400, "malformed_json", full, path);
		return;
	}
	if (!check_kind(ing, req, src, doc, campaign_id, &route)) {
		cJSON_Delete(doc);
		return;
	}
	if (src->kind->keys) {
		publish_each(ing, req, src, doc, &route, whid, data, len);
		cJSON_Delete(doc);
		return;
	}
	if (whid && !id_acceptable(whid)) {
		cJSON_Delete(doc);
		reply_error(ing, req, 400, "bad_webhook_id",
			    "webhook-id must be 1-256 printable characters",
			    NULL);
		return;
	}
	if (!whid) {
		util_random_id(gen_id, sizeof(gen_id), "wh_");
		whid = gen_id;
	}
	util_random_id(request_id, sizeof(request_id), "req_");

	p = xcalloc(1, sizeof(*p));
	p->req = req;
	p->ing = ing;
	p->id = xstrdup(whid);
	p->key = xstrdup(route.key);
	p->key_header = src->kind->key_header;
	p->success_status = src->success_status;
	p->key_name = src->kind->key_name;
	p->event_type = xstrdup(route.event_type);
	p->campaign_id = campaign_id ? xstrdup(campaign_id) : NULL;
	p->started_ms = util_mono_ms();
	cJSON_Delete(doc); /* route's strings are copied above */
	p->next = ing->pending;
	if (p->next)
		p->next->prev = p;
	ing->pending = p;
	ing->inflight++;

	err = publish_record(ing, p, src, data, len, request_id, util_now_ms());
	if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
		reply_too_large(ing, req, 0);
		pending_destroy(p);
		return;
	}
	if (err) {
		snprintf(msg, sizeof(msg), "cannot queue the event: %s",
			 rd_kafka_err2str(err));
		reply_error(ing, req, 503, "unavailable", msg, NULL);
		pending_destroy(p);
		return;
	}
	{
		struct timeval tv = util_ms_tv(ing->cfg.delivery_timeout_ms);

		p->deadline = evtimer_new(ing->base, handle_deadline, p);
		evtimer_add(p->deadline, &tv);
	}
	log_ctx_debug(request_id, "queued %s for %s (%zu bytes)", p->id, p->key,
		      len);
}

/* Meta's subscription handshake: GET ?hub.mode=subscribe&hub.verify_token=T
 * &hub.challenge=C → 200 with C when T is the source's verify_token. */
static void handle_handshake(struct ingest *ing, struct evhttp_request *req,
			     const struct source *src)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
	struct evkeyvalq params;
	const char *mode, *token, *challenge;
	bool ok;

	memset(&params, 0, sizeof(params));
	params.tqh_last = &params.tqh_first;
	if (query)
		evhttp_parse_query_str(query, &params);
	mode = evhttp_find_header(&params, "hub.mode");
	token = evhttp_find_header(&params, "hub.verify_token");
	challenge = evhttp_find_header(&params, "hub.challenge");
	ok = src->verify_token && mode && strcmp(mode, "subscribe") == 0 &&
	     token && challenge && strlen(challenge) <= 256 &&
	     strlen(token) == strlen(src->verify_token) &&
	     CRYPTO_memcmp(token, src->verify_token, strlen(token)) == 0;
	if (ok) {
		struct evbuffer *out = evbuffer_new();

		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Content-Type", "text/plain");
		evbuffer_add(out, challenge, strlen(challenge));
		send_reply(ing, req, 200, "OK", out);
		evbuffer_free(out);
		ing->m.responses[ST_200]++;
	} else {
		reply_error(ing, req, 403, "forbidden",
			    "hub.mode must be subscribe and hub.verify_token "
			    "must match",
			    NULL);
	}
	evhttp_clear_headers(&params);
}

/* A path segment, percent-decoded: NULL with *problem set when a '%' is not
 * followed by two hex digits or a byte decodes to NUL (either would make
 * the id differ between sluice, its logs and whoever reads them). */
static char *segment_decode(const char *raw, size_t len, char *problem,
			    size_t problem_size)
{
	char *copy, *decoded;
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		if (raw[i] != '%')
			continue;
		if (i + 2 >= len || !isxdigit((unsigned char)raw[i + 1]) ||
		    !isxdigit((unsigned char)raw[i + 2])) {
			int shown = 1;

			while (shown < 3 && i + (size_t)shown < len &&
			       isgraph((unsigned char)raw[i + shown]))
				shown++;
			snprintf(problem, problem_size,
				 "bad percent-encoding \"%.*s\" at byte %zu: "
				 "'%%' must be followed by two hex digits",
				 shown, raw + i, i);
			return NULL;
		}
		if (raw[i + 1] == '0' && raw[i + 2] == '0') {
			snprintf(problem, problem_size,
				 "%%00 at byte %zu decodes to a NUL byte, "
				 "which is not allowed",
				 i);
			return NULL;
		}
		i += 2;
	}
	copy = xstrndup(raw, len);
	decoded = evhttp_uridecode(copy, 0, &n);
	free(copy);
	if (!decoded)
		abort();
	return decoded;
}

static void handle_webhook(struct ingest *ing, struct evhttp_request *req,
			   const char *name)
{
	struct source *src = ingest_source_find(&ing->cfg, name, strlen(name));

	/* Campaign batches have their own path. */
	if (!src || src->kind->own_path) {
		reply_error(ing, req, 404, "unknown_source",
			    "no such webhook source", NULL);
		return;
	}
	if (src->kind->handshake &&
	    evhttp_request_get_command(req) == EVHTTP_REQ_GET) {
		handle_handshake(ing, req, src);
		return;
	}
	handle_publish(ing, req, src, NULL);
}

/* POST /v1/campaigns/{campaign_id}/batches; id is the raw path segment. */
static void handle_campaign(struct ingest *ing, struct evhttp_request *req,
			    const char *id, size_t id_len)
{
	struct source *src = ingest_source_of_kind(&ing->cfg, KIND_CAMPAIGN);
	char problem[160];
	char *decoded = segment_decode(id, id_len, problem, sizeof(problem));
	size_t n = decoded ? strlen(decoded) : 0;

	if (!src) {
		reply_error(ing, req, 404, "not_found",
			    "no campaign source is configured", NULL);
	} else if (!decoded) {
		char msg[200];

		snprintf(msg, sizeof(msg), "the campaign id in the path: %s",
			 problem);
		reply_error(ing, req, 400, "bad_path", msg, NULL);
	} else if (n == 0 || n > CAMPAIGN_ID_MAX ||
		   !util_utf8_valid(decoded, n)) {
		reply_error(ing, req, 404, "not_found",
			    "the campaign id in the path is empty, too long "
			    "or not UTF-8",
			    NULL);
	} else {
		handle_publish(ing, req, src, decoded);
	}
	free(decoded);
}

static void handle_metrics(struct ingest *ing, struct evhttp_request *req)
{
	static const char *const codes[ST_COUNT] = {
	    "200", "202", "400", "401", "404", "405", "408",  "411",
	    "413", "415", "422", "429", "500", "503", "other"};
	static const char *const le[8] = {"1",	"2",  "5",   "10",
					  "25", "50", "100", "+Inf"};
	struct evbuffer *out = evbuffer_new();
	uint64_t cum = 0;

	evbuffer_add_printf(out,
			    "# TYPE sluice_ingest_responses_total counter\n");
	for (int i = 0; i < ST_COUNT; i++)
		evbuffer_add_printf(
		    out, "sluice_ingest_responses_total{code=\"%s\"} %llu\n",
		    codes[i], (unsigned long long)ing->m.responses[i]);
	evbuffer_add_printf(
	    out,
	    "# TYPE sluice_ingest_delivered_total counter\n"
	    "sluice_ingest_delivered_total %llu\n"
	    "# TYPE sluice_ingest_delivery_failed_total counter\n"
	    "sluice_ingest_delivery_failed_total %llu\n"
	    "# TYPE sluice_ingest_late_deliveries_total counter\n"
	    "sluice_ingest_late_deliveries_total %llu\n"
	    "# TYPE sluice_ingest_accept_errors_total counter\n"
	    "sluice_ingest_accept_errors_total %llu\n"
	    "# TYPE sluice_ingest_producer_rebuilds_total counter\n"
	    "sluice_ingest_producer_rebuilds_total %llu\n"
	    "# TYPE sluice_ingest_connections gauge\n"
	    "sluice_ingest_connections %d\n"
	    "# TYPE sluice_ingest_max_connections gauge\n"
	    "sluice_ingest_max_connections %d\n"
	    "# TYPE sluice_ingest_connections_refused_total counter\n"
	    "sluice_ingest_connections_refused_total %llu\n"
	    "# TYPE sluice_ingest_request_timeouts_total counter\n"
	    "sluice_ingest_request_timeouts_total %llu\n"
	    "# TYPE sluice_ingest_inflight gauge\n"
	    "sluice_ingest_inflight %d\n"
	    "# TYPE sluice_ingest_kafka_up gauge\n"
	    "sluice_ingest_kafka_up %d\n"
	    "# TYPE sluice_ingest_delivery_ms histogram\n",
	    (unsigned long long)ing->m.delivered,
	    (unsigned long long)ing->m.delivery_failed,
	    (unsigned long long)ing->m.late_deliveries,
	    (unsigned long long)ing->m.accept_errors,
	    (unsigned long long)ing->m.producer_rebuilds, ing->conns,
	    ing->max_connections,
	    (unsigned long long)ing->m.connections_refused,
	    (unsigned long long)ing->m.request_timeouts, ing->inflight,
	    ing->kafka_up ? 1 : 0);
	evbuffer_add_printf(
	    out, "# TYPE sluice_ingest_rate_limited_total counter\n");
	for (const struct source *src = ing->cfg.sources; src; src = src->next)
		evbuffer_add_printf(
		    out,
		    "sluice_ingest_rate_limited_total{source=\"%s\"} %llu\n",
		    src->name, src->limited);
	evbuffer_add_printf(out,
			    "# TYPE sluice_ingest_reloads_total counter\n"
			    "sluice_ingest_reloads_total{result=\"ok\"} %llu\n"
			    "sluice_ingest_reloads_total{result=\"failed\"} "
			    "%llu\n",
			    (unsigned long long)ing->m.reloads,
			    (unsigned long long)ing->m.reload_failures);
	evbuffer_add_printf(
	    out,
	    "sluice_ingest_reloads_total{result=\"restart_required\"} %llu\n"
	    "# TYPE sluice_ingest_config_restart_pending gauge\n"
	    "sluice_ingest_config_restart_pending %d\n",
	    (unsigned long long)ing->m.reloads_restart,
	    ing->m.restart_pending ? 1 : 0);
	for (int i = 0; i < 8; i++) {
		cum += ing->m.delivery_ms_buckets[i];
		evbuffer_add_printf(
		    out, "sluice_ingest_delivery_ms_bucket{le=\"%s\"} %llu\n",
		    le[i], (unsigned long long)cum);
	}
	evbuffer_add_printf(out,
			    "sluice_ingest_delivery_ms_sum %llu\n"
			    "sluice_ingest_delivery_ms_count %llu\n",
			    (unsigned long long)ing->m.delivery_ms_sum,
			    (unsigned long long)cum);
	evhttp_add_header(evhttp_request_get_output_headers(req),
			  "Content-Type", "text/plain; version=0.0.4");
	send_reply(ing, req, 200, "OK", out);
	evbuffer_free(out);
	ing->m.responses[ST_200]++;
}

static void handle_probe(struct ingest *ing, struct evhttp_request *req,
			 bool ready_check)
{
	cJSON *o = cJSON_CreateObject();
	bool ok = true;

	if (ready_check) {
		ok = ing->kafka_up && !ing->draining &&
		     ing->inflight < ing->cfg.max_inflight;
		cJSON_AddBoolToObject(o, "kafka", ing->kafka_up);
		cJSON_AddBoolToObject(o, "draining", ing->draining);
		cJSON_AddNumberToObject(o, "inflight", ing->inflight);
	}
	cJSON_AddStringToObject(o, "status", ok ? "ok" : "unavailable");
	reply_json(ing, req, ok ? 200 : 503, o);
}

/* Two Content-Length headers that differ, or one beside a
 * Transfer-Encoding, let a proxy and sluice see different bodies (request
 * smuggling): refused, and the connection closed. */
static bool framing_ok(struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *cl = NULL;
	bool te = false;

	for (struct evkeyval *h = in ? in->tqh_first : NULL; h;
	     h = h->next.tqe_next) {
		if (strcasecmp(h->key, "Content-Length") == 0) {
			if (cl && strcmp(cl, h->value) != 0)
				return false;
			cl = h->value;
		} else if (strcasecmp(h->key, "Transfer-Encoding") == 0) {
			te = true;
		}
	}
	return !(cl && te);
}

/* evhttp reads a body only for POST, PUT and PATCH: any other request's
 * body stays in the input and would be parsed as the next request, one a
 * proxy in front never saw (request smuggling). So the connection of a
 * request of another method that declares a body is closed after its
 * answer, the body unread; a GET or HEAD is refused outright (400). */
static bool body_declared_without_reading(struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *cl = evhttp_find_header(in, "Content-Length");

	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_POST:
	case EVHTTP_REQ_PUT:
	case EVHTTP_REQ_PATCH: return false;
	default: break;
	}
	if (evhttp_find_header(in, "Transfer-Encoding"))
		return true;
	if (!cl)
		return false;
	cl += strspn(cl, "0"); /* "0", "00": no body */
	return *cl != '\0';
}

static bool probe_path(const char *path)
{
	return path &&
	       (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0 ||
		strcmp(path, "/metrics") == 0);
}

/* Every request, on the event loop thread. */
static void handle_request(struct evhttp_request *req, void *arg)
{
	struct ingest *ing = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	bool probe = probe_path(path) &&
		     (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD);

	/* Over max_connections only the probes are served: a liveness
	 * check must not fail because of a flood it is not part of. */
	if (!conn_request(ing, req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Connection", "close");
		if (!probe) {
			reply_error(ing, req, 503, "too_many_connections",
				    "too many open connections "
				    "(max_connections); retry later",
				    NULL);
			return;
		}
	}
	if (!framing_ok(req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Connection", "close");
		reply_error(ing, req, 400, "bad_request",
			    "conflicting Content-Length or Transfer-Encoding "
			    "headers",
			    NULL);
		return;
	}
	if (body_declared_without_reading(req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Connection", "close");
		if (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD) {
			reply_error(
			    ing, req, 400, "body_not_allowed",
			    "a GET or HEAD request must not have a body "
			    "(Content-Length or Transfer-Encoding); the "
			    "connection is closed",
			    NULL);
			return;
		}
	}
	if (!path) {
		/* evhttp answers a request it could not parse itself (conn.c
		 * turns that answer into JSON); this is a safety net. */
		reply_error(ing, req, 400, "bad_request", "unparsable request",
			    NULL);
		return;
	}
	if (strncmp(path, WEBHOOK_PREFIX, strlen(WEBHOOK_PREFIX)) == 0 &&
	    path[strlen(WEBHOOK_PREFIX)] &&
	    !strchr(path + strlen(WEBHOOK_PREFIX), '/')) {
		const char *raw = path + strlen(WEBHOOK_PREFIX);
		char problem[160];
		char *name =
		    segment_decode(raw, strlen(raw), problem, sizeof(problem));

		if (!name) {
			char msg[200];

			snprintf(msg, sizeof(msg),
				 "the source name in the "
				 "path: %s",
				 problem);
			reply_error(ing, req, 400, "bad_path", msg, NULL);
			return;
		}
		handle_webhook(ing, req, name);
		free(name);
		return;
	}
	if (strncmp(path, CAMPAIGN_PREFIX, strlen(CAMPAIGN_PREFIX)) == 0) {
		const char *id = path + strlen(CAMPAIGN_PREFIX);
		const char *slash = strchr(id, '/');

		if (slash && slash > id &&
		    strcmp(slash, CAMPAIGN_SUFFIX) == 0) {
			handle_campaign(ing, req, id, (size_t)(slash - id));
			return;
		}
	}
	if (probe_path(path)) {
		if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
			evhttp_add_header(
			    evhttp_request_get_output_headers(req), "Allow",
			    "GET");
			reply_error(ing, req, 405, "method_not_allowed",
				    "use GET", NULL);
		} else if (path[1] == 'm') {
			handle_metrics(ing, req);
		} else {
			handle_probe(ing, req, path[1] == 'r');
		}
		return;
	}
	reply_error(ing, req, 404, "not_found", "no such path", NULL);
}

/* Loop timer: accept again after an error paused it. */
static void handle_accept_retry(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ing = arg;

	(void)fd;
	(void)what;
	if (ing->bound)
		evconnlistener_enable(
		    evhttp_bound_socket_get_listener(ing->bound));
}

/* evconnlistener, on the loop: accept() failed. Out of descriptors the
 * listening socket stays readable, so without this the loop would spin on
 * it: pause accepting with a back-off (10 ms doubling to 1 s), shed the
 * waiting connection with the spare descriptor, log once a second. */
static struct ingest *accept_ing; /* the listener's argument is evhttp's */

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct ingest *ing = accept_ing;
	int err = EVUTIL_SOCKET_ERROR();
	int wait = backoff_next(&ing->accept_backoff);
	struct timeval tv = util_ms_tv(wait);

	(void)arg;
	ing->m.accept_errors++;
	evconnlistener_disable(lev);
	if ((err == EMFILE || err == ENFILE) && ing->spare_fd >= 0) {
		int fd;

		close(ing->spare_fd);
		fd = accept(evconnlistener_get_fd(lev), NULL, NULL);
		if (fd >= 0)
			close(fd);
		ing->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	if (util_mono_ms() - ing->accept_logged_ms >= 1000) {
		ing->accept_logged_ms = util_mono_ms();
		log_warn(
		    "accept: %s; pausing new connections for %d ms (%llu accept errors so far)",
		    evutil_socket_error_to_string(err), wait,
		    (unsigned long long)ing->m.accept_errors);
	}
	evtimer_add(ing->accept_retry, &tv);
}

void http_apply_settings(struct ingest *ing)
{
	/* Bodies a little over the limit get our JSON 413 from
	 * handle_publish; evhttp's own (HTML) 413 only guards memory against
	 * far larger ones. */
	evhttp_set_max_body_size(
	    ing->http, (ev_ssize_t)ing->cfg.max_body_bytes * 4 + 65536);
	/* A second more than conn.c's whole-request deadline, which thus
	 * always comes first and answers 408; evhttp's own read timeout
	 * would close without a word. It still bounds writes. */
	evhttp_set_timeout(ing->http, ing->cfg.request_timeout_s + 1);
	conn_apply_settings(ing);
}

bool http_setup(struct ingest *ing, char *errstr, size_t errstr_size)
{
	char host[256];
	const char *colon = strrchr(ing->cfg.listen, ':');
	size_t hlen = (size_t)(colon - ing->cfg.listen);
	int port = atoi(colon + 1);

	if (hlen >= sizeof(host) || port <= 0 || port > 65535) {
		snprintf(errstr, errstr_size, "listen: bad address \"%s\"",
			 ing->cfg.listen);
		return false;
	}
	memcpy(host, ing->cfg.listen, hlen);
	host[hlen] = '\0';
	ing->http = evhttp_new(ing->base);
	if (!ing->http) {
		snprintf(errstr, errstr_size, "evhttp_new failed");
		return false;
	}
	http_apply_settings(ing);
	conn_setup(ing, http_evhttp_error);
	evhttp_set_max_headers_size(ing->http, 64 * 1024);
	evhttp_set_allowed_methods(
	    ing->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
			   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
			   EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
	evhttp_set_gencb(ing->http, handle_request, ing);
	ing->bound =
	    evhttp_bind_socket_with_handle(ing->http, host, (ev_uint16_t)port);
	if (!ing->bound) {
		snprintf(errstr, errstr_size, "cannot listen on %s",
			 ing->cfg.listen);
		return false;
	}
	ing->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	backoff_init(&ing->accept_backoff, 10, 1000);
	ing->accept_retry = evtimer_new(ing->base, handle_accept_retry, ing);
	accept_ing = ing;
	evconnlistener_set_error_cb(
	    evhttp_bound_socket_get_listener(ing->bound), accept_error_cb);
	return true;
}

void http_stop_accepting(struct ingest *ing)
{
	if (ing->bound) {
		evhttp_del_accept_socket(ing->http, ing->bound);
		ing->bound = NULL;
	}
}

void http_cleanup(struct ingest *ing)
{
	/* Requests still waiting lose their connection with evhttp_free;
	 * their delivery reports must not touch them afterwards. */
	for (struct pending *p = ing->pending; p; p = p->next) {
		struct evhttp_request **req =
		    p->group ? &p->group->req : &p->req;

		if (*req)
			reply_error(ing, *req, 503, "unavailable",
				    "shutting down before Kafka confirmed the "
				    "event; retry",
				    NULL);
		*req = NULL;
	}
	if (ing->http)
		evhttp_free(ing->http);
	ing->http = NULL;
	conn_cleanup(ing);
	if (ing->accept_retry)
		event_free(ing->accept_retry);
	ing->accept_retry = NULL;
	if (ing->spare_fd > 0)
		close(ing->spare_fd);
	ing->spare_fd = -1;
}
