/* Routing key and event type extraction per source kind. */
#include "../../ingest/extract.h"
#include "../../ingest/settings.h"
#include "check.h"

static const struct {
	const char *json;
	bool ok;
	const char *key, *event, *path;
} cases[] = {
    {"{\"conversation_id\":\"c1\",\"event_type\":\"system.shutdown\"}", true,
     "c1", "system.shutdown", NULL},
    {"{\"conversation_id\":\"c1\",\"type\":\"application.transcription_"
     "ready\"}",
     true, "c1", "application.transcription_ready", NULL},
    {"{\"conversation_id\":\"c1\",\"event_type\":\"a\",\"type\":\"b\"}", true,
     "c1", "a", NULL},
    {"{\"conversation_id\":\"\",\"event_type\":\"a\"}", false, NULL, NULL,
     "$.conversation_id"},
    {"{\"conversation_id\":5,\"event_type\":\"a\"}", false, NULL, NULL,
     "$.conversation_id"},
    {"{\"event_type\":\"a\"}", false, NULL, NULL, "$.conversation_id"},
    {"{\"conversation_id\":\"c\"}", false, NULL, NULL, "$.event_type"},
    {"[]", false, NULL, NULL, "$"},
};

int main(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cJSON *doc = cJSON_Parse(cases[i].json);
		struct extracted ex;
		char path[64], msg[128];
		bool ok = extract_fields(KIND_TRANSCRIPT, doc, &ex, path,
					 sizeof(path), msg, sizeof(msg));

		CHECK(ok == cases[i].ok, "case %zu: %s", i, cases[i].json);
		if (ok) {
			CHECK_STR(ex.key, cases[i].key, "key");
			CHECK_STR(ex.event_type, cases[i].event, "event type");
		} else {
			CHECK_STR(path, cases[i].path, "path");
		}
		cJSON_Delete(doc);
	}
	return check_done("test_extract");
}
