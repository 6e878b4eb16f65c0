/* The access log: one line per HTTP answer, and the request id that goes
 * back in X-Request-Id. */
#include "access.h"

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "util.h"

const char *const access_mode_names[] = {"off", "text", "json", NULL};

void access_log(int mode, const struct access_entry *e)
{
	if (mode == ACCESS_OFF || LOG_INFO < log_level_current)
		return;
	if (mode == ACCESS_JSON) {
		cJSON *o = cJSON_CreateObject();
		char *line;

		cJSON_AddStringToObject(o, "client", e->client);
		cJSON_AddStringToObject(o, "method", e->method);
		cJSON_AddStringToObject(o, "path", e->path);
		if (e->source)
			cJSON_AddStringToObject(o, "source", e->source);
		cJSON_AddNumberToObject(o, "status", e->status);
		cJSON_AddNumberToObject(o, "bytes", (double)e->bytes);
		cJSON_AddNumberToObject(
		    o, "ms", (double)(long long)(e->ms * 1000) / 1000.0);
		cJSON_AddStringToObject(o, "request_id", e->request_id);
		if (e->reason)
			cJSON_AddStringToObject(o, "reason", e->reason);
		line = cJSON_PrintUnformatted(o);
		if (line)
			log_write(LOG_INFO, "access", "%s", line);
		cJSON_free(line);
		cJSON_Delete(o);
		return;
	}
	char ms[32] = "-";

	if (e->ms >= 0)
		snprintf(ms, sizeof(ms), "%.3fms", e->ms);
	/* The path is the client's: %.200s keeps a hostile one from
	 * filling the line; log_write keeps it on one line. */
	log_write(LOG_INFO, "access",
		  "%s \"%s %.200s\" %d %zu %s req=%s%s%s%s%s", e->client,
		  e->method, e->path, e->status, e->bytes, ms, e->request_id,
		  e->source ? " source=" : "", e->source ? e->source : "",
		  e->reason ? " reason=" : "", e->reason ? e->reason : "");
}

bool access_request_id_ok(const char *id)
{
	size_t n = 0;

	if (!id)
		return false;
	for (; id[n]; n++)
		if (n >= 128 || id[n] <= ' ' || id[n] > '~')
			return false;
	return n > 0;
}

void access_request_id(const char *incoming, char *out, size_t outsz)
{
	if (access_request_id_ok(incoming) && strlen(incoming) < outsz)
		snprintf(out, outsz, "%s", incoming);
	else
		util_random_id(out, outsz, "req_");
}

const char *access_method_name(int evhttp_cmd)
{
	switch (evhttp_cmd) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_PATCH: return "PATCH";
	default: return "OTHER";
	}
}
