/* The transcript JSON Schema from schemas/, as ingest enforces it. */
#include "../../common/schema.h"
#include "check.h"

static const struct {
	const char *json;
	bool ok;
	const char *path;
} cases[] = {
    {"{\"conversation_id\":\"c\",\"event_type\":\"system.shutdown\"}", true,
     NULL},
    {"{\"conversation_id\":\"c\",\"type\":\"x\"}", true, NULL},
    {"{\"conversation_id\":\"c\",\"event_type\":\"application.transcription_"
     "ready\",\"message_type\":\"application\","
     "\"timestamp\":\"2025-01-01T00:00:00Z\",\"properties\":{\"replica_id\":"
     "\"r\",\"transcript\":["
     "{\"role\":\"system\",\"content\":\"s\"},{\"id\":\"1\",\"role\":\"user\","
     "\"content\":\"u\"},{\"id\":7,\"role\":\"assistant\",\"content\":\"\"}]}}",
     true, NULL},
    {"{\"event_type\":\"x\"}", false, "$.conversation_id"},
    {"{\"conversation_id\":\"\",\"event_type\":\"x\"}", false,
     "$.conversation_id"},
    {"{\"conversation_id\":3,\"event_type\":\"x\"}", false,
     "$.conversation_id"},
    {"{\"conversation_id\":\"c\"}", false, "$.event_type"},
    {"{\"conversation_id\":\"c\",\"event_type\":\"x\",\"properties\":{"
     "\"transcript\":\"no\"}}",
     false, "$.properties.transcript"},
    {"{\"conversation_id\":\"c\",\"event_type\":\"x\",\"properties\":{"
     "\"transcript\":[{\"role\":\"user\"}]}}",
     false, "$.properties.transcript[0].content"},
    {"{\"conversation_id\":\"c\",\"event_type\":\"x\",\"properties\":{"
     "\"transcript\":[{\"role\":\"user\",\"content\":\"x\",\"id\":1.5}]}}",
     false, "$.properties.transcript[0].id"},
    {"[]", false, "$"},
};

int main(void)
{
	char err[256], path[128], msg[128];
	struct schema *s =
	    schema_load(SCHEMA_DIR "/transcript.schema.json", err, sizeof(err));

	CHECK(s != NULL, "load: %s", err);
	if (!s)
		return check_done("test_schema");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cJSON *doc = cJSON_Parse(cases[i].json);
		bool ok = schema_validate(s, doc, path, sizeof(path), msg,
					  sizeof(msg));

		CHECK(ok == cases[i].ok, "case %zu: %s %s", i, path, msg);
		if (!ok && !cases[i].ok)
			CHECK_STR(path, cases[i].path, "path");
		cJSON_Delete(doc);
	}
	schema_destroy(s);
	return check_done("test_schema");
}
