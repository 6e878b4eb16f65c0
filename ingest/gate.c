/* The checks every kind's POST passes before its kind's step. */
#include "gate.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "../common/util.h"
#include "../common/validate.h"
#include "ingest.h"
#include "reply.h"
#include "step.h"
#include "verify.h"

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

void gate_publish(struct ingest *ing, struct evhttp_request *req,
		  struct source *src, const char *campaign_id)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evbuffer *body = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(body);
	struct sw_headers sw;
	char path[256], msg[256];
	const char *data;
	long bad_at = 0;
	cJSON *doc;

	sw_headers_find(in, &sw);
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
		    src->key, src->key_len, sw.id, sw.timestamp, sw.signature,
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
	/* doc is step.c's now */
	step_publish(ing, req, src, doc, campaign_id, sw.id, data, len);
}
