/* What a payload of each source kind is routed by: key and event type. */
#include "extract.h"

#include <stdio.h>

#include "../common/campaign.h"
#include "../common/validate.h"

#include "settings.h"

static const char *string_field(const cJSON *doc, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, name);

	return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

bool extract_fields(int kind, const cJSON *doc, struct extracted *out,
		    char *path, size_t pathsz, char *msg, size_t msgsz)
{
	out->key = NULL;
	out->event_type = NULL;
	if (!cJSON_IsObject(doc)) {
		snprintf(path, pathsz, "$");
		snprintf(msg, msgsz, "must be an object");
		return false;
	}
	switch (kind) {
	case KIND_TRANSCRIPT:
		/* What the worker will require, byte for byte. */
		if (!transcript_validate(doc, path, pathsz, msg, msgsz))
			return false;
		out->key = string_field(doc, "conversation_id");
		if (!out->key) {
			snprintf(path, pathsz, "$.conversation_id");
			snprintf(msg, msgsz, "must be a non-empty string");
			return false;
		}
		/* Senders spell the event type either way. */
		out->event_type = string_field(doc, "event_type");
		if (!out->event_type)
			out->event_type = string_field(doc, "type");
		if (!out->event_type) {
			snprintf(path, pathsz, "$.event_type");
			snprintf(
			    msg, msgsz,
			    "event_type (or type) must be a non-empty string");
			return false;
		}
		return true;
	case KIND_LEAD_UPDATED:
		if (!lead_update_parse(doc, &out->key, out->key_text, path,
				       pathsz, msg, msgsz))
			return false;
		out->event_type = string_field(doc, "event_type");
		if (!out->event_type)
			out->event_type = string_field(doc, "type");
		if (!out->event_type)
			out->event_type = LEAD_UPDATED_EVENT_TYPE;
		return true;
	case KIND_CAMPAIGN: {
		struct campaign_batch b;
		struct campaign_error err = {0};
		size_t n = 0;
		bool ok = campaign_parse(doc, 0, &b, &err, 1, &n);

		campaign_batch_free(&b);
		if (!ok) {
			snprintf(path, pathsz, "%s", err.path);
			snprintf(msg, msgsz, "%s", err.message);
			return false;
		}
		out->key = b.run_id;
		out->event_type = CAMPAIGN_EVENT_TYPE;
		return true;
	}
	}
	snprintf(path, pathsz, "$");
	snprintf(msg, msgsz, "unknown source kind");
	return false;
}
