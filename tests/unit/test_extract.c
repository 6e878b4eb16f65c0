/* Routing key and event type extraction per source kind. */
#include <string.h>

#include "../../common/kinds.h"
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
		struct kind_route ex;
		struct kind_error err;
		size_t n = 0;
		bool ok =
		    kind_find(KIND_TRANSCRIPT)
			->check(doc, &(struct kind_args){0}, &ex, &err, 1, &n);

		CHECK(ok == cases[i].ok, "case %zu: %s", i, cases[i].json);
		if (ok) {
			CHECK_STR(ex.key, cases[i].key, "key");
			CHECK_STR(ex.event_type, cases[i].event, "event type");
		} else {
			CHECK_STR(err.path, cases[i].path, "path");
		}
		cJSON_Delete(doc);
	}
	/* Every row has a name that kind_find finds, and a check. */
	for (int i = 0; kinds[i]; i++) {
		CHECK(kind_find(kinds[i]->name) == kinds[i], "%s",
		      kinds[i]->name);
		CHECK(kinds[i]->check && kinds[i]->key_name, "%s",
		      kinds[i]->name);
	}
	CHECK(kind_find("nope") == NULL, "unknown kind");
	{
		char names[128];

		kind_names(names, sizeof(names));
		CHECK_STR(names, "transcript, campaign, lead_updated, chat",
			  "names");
	}
	return check_done("test_extract");
}
