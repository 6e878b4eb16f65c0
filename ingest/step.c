/* Each kind's step: its checks, then its records. */
#include "step.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/kinds.h"
#include "../common/log.h"
#include "../common/schema.h"
#include "../common/util.h"
#include "ingest.h"
#include "pending.h"
#include "publish.h"
#include "reply.h"

#define MAX_ID_LEN 256

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
	size_t max = k->all_errors ? REPLY_MAX_PROBLEMS : 1, n = 0;
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
			bool last = g->left == 1;

			pending_group_failed(ing, p, err);
			if (last)
				return; /* answered and freed */
		}
	}
}

/* The kind's checks, then its record (one per key for a kind that has
 * several). */
void step_publish(struct ingest *ing, struct evhttp_request *req,
		  const struct source *src, cJSON *doc, const char *campaign_id,
		  const char *whid, const char *data, size_t len)
{
	char msg[256], request_id[40], gen_id[40];
	struct kind_route route;
	struct pending *p;
	rd_kafka_resp_err_t err;

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
	cJSON_Delete(doc); /* route's strings are copied above */
	pending_link(ing, p);

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
	log_ctx_debug(request_id, "queued %s for %s (%zu bytes)", p->id, p->key,
		      len);
}

void step_handshake(struct ingest *ing, struct evhttp_request *req,
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

		evbuffer_add(out, challenge, strlen(challenge));
		reply_text(ing, req, 200, "text/plain", out);
		evbuffer_free(out);
	} else {
		reply_error(ing, req, 403, "forbidden",
			    "hub.mode must be subscribe and hub.verify_token "
			    "must match",
			    NULL);
	}
	evhttp_clear_headers(&params);
}
