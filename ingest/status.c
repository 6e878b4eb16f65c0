/* sluice-ingest's GET /status (sources, limits, connections, what waits
 * for Kafka, the configuration) and PUT /admin/log-level. */
#include "status.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/admin.h"
#include "../common/log.h"
#include "../common/util.h"
#include "ingest.h"
#include "reply.h"

static const char *const signature_names[] = {"none", "standard-webhooks",
					      "meta"};

static char *admin_token; /* NULL: loopback only */
static int64_t started_ms;

bool status_setup(struct ingest *ing, char *errstr, size_t errstr_size)
{
	started_ms = util_mono_ms();
	if (!ing->cfg.admin_token_file[0])
		return true;
	return admin_token_load(ing->cfg.admin_token_file, &admin_token, errstr,
				errstr_size);
}

void status_cleanup(void)
{
	free(admin_token);
	admin_token = NULL;
}

bool status_path(const char *path)
{
	return strcmp(path, "/status") == 0 || strncmp(path, "/admin/", 7) == 0;
}

static cJSON *sources_json(const struct ingest *ing)
{
	cJSON *arr = cJSON_CreateArray();

	for (const struct source *s = ing->cfg.sources; s; s = s->next) {
		cJSON *o = cJSON_CreateObject();

		cJSON_AddStringToObject(o, "name", s->name);
		cJSON_AddStringToObject(o, "kind",
					s->kind ? s->kind->name : "");
		cJSON_AddStringToObject(o, "signature",
					s->signature >= 0 &&
						s->signature <= SIG_META
					    ? signature_names[s->signature]
					    : "unset");
		cJSON_AddNumberToObject(o, "success_status", s->success_status);
		cJSON_AddNumberToObject(o, "rate_per_s", s->rate_per_s);
		cJSON_AddNumberToObject(o, "burst", s->burst);
		cJSON_AddNumberToObject(o, "rate_limited", (double)s->limited);
		cJSON_AddItemToArray(arr, o);
	}
	return arr;
}

static void handle_status(struct ingest *ing, struct evhttp_request *req)
{
	cJSON *o = cJSON_CreateObject(), *lim, *cfg;

	cJSON_AddStringToObject(o, "daemon", "sluice-ingest");
	cJSON_AddStringToObject(o, "version", SLUICE_VERSION);
	cJSON_AddNumberToObject(o, "uptime_s",
				(double)(util_mono_ms() - started_ms) / 1000.0);
	cJSON_AddStringToObject(o, "log_level",
				log_level_names[log_level_current]);
	cJSON_AddBoolToObject(o, "kafka_up", ing->kafka_up);
	cJSON_AddBoolToObject(o, "draining", ing->draining);
	cJSON_AddNumberToObject(o, "connections", ing->conns);
	cJSON_AddNumberToObject(o, "connections_refused_open",
				ing->conns_refused_open);
	cJSON_AddNumberToObject(o, "inflight", ing->inflight);
	cJSON_AddNumberToObject(o, "producer_queue",
				ing->rk ? rd_kafka_outq_len(ing->rk) : 0);
	lim = cJSON_AddObjectToObject(o, "limits");
	cJSON_AddNumberToObject(lim, "max_body_bytes", ing->cfg.max_body_bytes);
	/* What Kafka takes, when lower than max_body_bytes it wins. */
	cJSON_AddNumberToObject(lim, "max_record_bytes", ing->max_record_bytes);
	cJSON_AddNumberToObject(lim, "max_inflight", ing->cfg.max_inflight);
	cJSON_AddNumberToObject(lim, "max_connections", ing->max_connections);
	cJSON_AddNumberToObject(lim, "request_timeout_s",
				ing->cfg.request_timeout_s);
	cJSON_AddNumberToObject(lim, "delivery_timeout_ms",
				ing->cfg.delivery_timeout_ms);
	cJSON_AddNumberToObject(lim, "retry_after_s", ing->cfg.retry_after_s);
	cJSON_AddNumberToObject(lim, "campaign_max_messages",
				ing->cfg.campaign_max_messages);
	cJSON_AddItemToObject(o, "sources", sources_json(ing));
	cfg = admin_config_json(ingest_settings, &ing->cfg, ing->cfg.kafka);
	/* The level in force, which PUT /admin/log-level may have moved. */
	cJSON_ReplaceItemInObjectCaseSensitive(
	    cJSON_GetObjectItemCaseSensitive(cfg, "log_level"), "value",
	    cJSON_CreateString(log_level_names[log_level_current]));
	cJSON_AddItemToObject(o, "config", cfg);
	reply_json(ing, req, 200, o);
}

static void handle_log_level(struct ingest *ing, struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *body = (const char *)evbuffer_pullup(in, -1);
	int level = admin_parse_level(body ? body : "", body ? len : 0);
	int was = log_level_current;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	char *addr = NULL;
	ev_uint16_t port = 0;
	cJSON *o;

	if (level < 0) {
		reply_error(ing, req, 422, "bad_log_level",
			    "expected debug, info, warn or error, or "
			    "{\"level\": \"...\"}",
			    NULL);
		return;
	}
	if (evcon)
		evhttp_connection_get_peer(evcon, &addr, &port);
	log_set_level(level);
	/* At warn, so the change itself is seen at any level. */
	log_warn("log level %s -> %s (by %s)", log_level_names[was],
		 log_level_names[level], addr ? addr : "-");
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "log_level", log_level_names[level]);
	cJSON_AddStringToObject(o, "was", log_level_names[was]);
	reply_json(ing, req, 200, o);
}

void status_handle(struct ingest *ing, struct evhttp_request *req,
		   const char *path)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	bool is_status = strcmp(path, "/status") == 0;
	bool is_level = strcmp(path, "/admin/log-level") == 0;
	const char *denied;

	if (!is_status && !is_level) {
		reply_error(ing, req, 404, "not_found", "no such path", NULL);
		return;
	}
	/* /status is read-only but shows the configuration: it asks what
	 * the admin routes ask. */
	denied = admin_authorize(
	    evcon ? evhttp_connection_get_addr(evcon) : NULL,
	    evhttp_find_header(evhttp_request_get_input_headers(req),
			       "Authorization"),
	    admin_token);
	if (denied) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "WWW-Authenticate", "Bearer");
		reply_error(ing, req, 401, denied,
			    strcmp(denied, "admin_token_invalid") == 0
				? "the bearer token is not admin_token_file's"
				: "admin routes answer loopback clients, or "
				  "Authorization: Bearer <admin_token_file's "
				  "token>",
			    NULL);
		return;
	}
	if (is_status && cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Allow", "GET");
		reply_error(ing, req, 405, "method_not_allowed", "use GET",
			    NULL);
	} else if (is_level && cmd != EVHTTP_REQ_PUT) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Allow", "PUT");
		reply_error(ing, req, 405, "method_not_allowed", "use PUT",
			    NULL);
	} else if (is_status) {
		handle_status(ing, req);
	} else {
		handle_log_level(ing, req);
	}
}
