/* What both daemons refuse: NUL escapes, repeated keys, and transcript
 * fields over their byte limits (what ingest once let through). */
#include <stdlib.h>
#include <string.h>

#include "../../common/validate.h"
#include "check.h"

static const struct {
	const char *json;
	bool ok;
	const char *path;
} raw[] = {
    {"{\"a\":\"x\"}", true, NULL},
    {"{\"a\":\"victim\\u0000x\"}", false, "$"},
    {"{\"a\":\"literal \\\\u0000 text\"}", true, NULL}, /* \\ then u0000 */
    {"{\"a\":\"\\\\\\u0000\"}", false, "$"}, /* \\ then a real \u0000 */
    {"{\"a\":1,\"a\":2}", false, "$"},
    {"{\"p\":{\"t\":[{\"id\":1},{\"id\":2,\"id\":3}]}}", false, "$.p.t[1]"},
    {"{\"a\":{\"b\":1},\"b\":{\"a\":1}}", true, NULL},
    {"[{\"k\":1},{\"k\":1}]", true, NULL},
    /* more keys than the pairwise check takes: the sorted path */
    {"{\"x\":[{},{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,\"g\":1,"
     "\"h\":1,\"i\":1,\"j\":1,\"k\":1,\"l\":1,\"m\":1,\"n\":1,\"o\":1,"
     "\"p\":1,\"q\":1,\"r\":1,\"s\":1,\"t\":1,\"u\":1,\"v\":1,\"w\":1,"
     "\"y\":1,\"z\":1,\"m\":2}]}",
     false, "$.x[1]"},
    {"{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,\"g\":1,\"h\":1,"
     "\"i\":1,\"j\":1,\"k\":1,\"l\":1,\"m\":1,\"n\":1,\"o\":1,\"p\":1,"
     "\"q\":1,\"r\":1,\"s\":1,\"t\":1,\"u\":1,\"v\":1,\"w\":1,\"x\":1,"
     "\"y\":1,\"z\":1}",
     true, NULL},
};

/* One JSON value and nothing but white space after it. */
static const struct {
	const char *text;
	bool ok;
	long bad_at; /* when refused */
} whole[] = {
    {"{\"a\":1}", true, 0},
    {"{\"a\":1} \r\n\t", true, 0},
    {"  [1, 2]", true, 0},
    {"{\"a\":1} junk", false, 8},
    {"{\"a\":1}{\"b\":2}", false, 7},
    {"{\"a\":1} x", false, 8},
    {"{\"a\":", false, 4},
    {"", false, 0},
};

static char *repeat(const char *unit, int n, const char *pre, const char *post)
{
	size_t len = strlen(pre) + strlen(unit) * (size_t)n + strlen(post) + 1;
	char *s = malloc(len);

	strcpy(s, pre);
	for (int i = 0; i < n; i++)
		strcat(s, unit);
	strcat(s, post);
	return s;
}

int main(void)
{
	char path[128], msg[160];

	for (size_t i = 0; i < sizeof(whole) / sizeof(whole[0]); i++) {
		long bad_at = -1;
		cJSON *doc = json_parse_whole(whole[i].text,
					      strlen(whole[i].text), &bad_at);

		CHECK((doc != NULL) == whole[i].ok, "whole %zu: %s", i,
		      whole[i].text);
		if (!doc && !whole[i].ok)
			CHECK(bad_at == whole[i].bad_at,
			      "whole %zu: bad at %ld, want %ld", i, bad_at,
			      whole[i].bad_at);
		cJSON_Delete(doc);
	}
	for (size_t i = 0; i < sizeof(raw) / sizeof(raw[0]); i++) {
		cJSON *doc = cJSON_Parse(raw[i].json);
		bool ok = json_check(raw[i].json, strlen(raw[i].json), doc,
				     path, sizeof(path), msg, sizeof(msg));

		CHECK(doc != NULL, "case %zu does not parse", i);
		CHECK(ok == raw[i].ok, "case %zu: %s", i, raw[i].json);
		if (!ok && !raw[i].ok)
			CHECK_STR(path, raw[i].path, raw[i].json);
		cJSON_Delete(doc);
	}
	{
		/* 200 x "é" = 400 bytes: over the 256-byte id limit. */
		char *body = repeat("\xc3\xa9", 200, "{\"conversation_id\":\"",
				    "\",\"event_type\":\"x\"}");
		cJSON *doc = cJSON_Parse(body);

		CHECK(!transcript_validate(doc, path, sizeof(path), msg,
					   sizeof(msg)),
		      "a 400-byte conversation id accepted");
		CHECK_STR(path, "$.conversation_id", "long id path");
		cJSON_Delete(doc);
		free(body);
	}
	{
		char *body = repeat(
		    "r", 65,
		    "{\"conversation_id\":\"c\",\"event_type\":"
		    "\"application.transcription_ready\",\"properties\":{"
		    "\"transcript\":[{\"role\":\"",
		    "\",\"content\":\"x\"}]}}");
		cJSON *doc = cJSON_Parse(body);

		CHECK(!transcript_validate(doc, path, sizeof(path), msg,
					   sizeof(msg)),
		      "a 65-byte role accepted");
		CHECK_STR(path, "$.properties.transcript[0].role", "role path");
		cJSON_Delete(doc);
		free(body);
	}
	{
		static const char *const ids[][2] = {
		    {"1e15", "0"},  {"-1e15", "0"},
		    {"1.5", "0"},   {"999999999999999", "1"},
		    {"\"x\"", "1"}, {"null", "1"},
		    {"true", "0"},  {"\"\"", "1"},
		};

		for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
			char body[300];
			cJSON *doc;

			snprintf(body, sizeof(body),
				 "{\"conversation_id\":\"c\",\"type\":"
				 "\"application.transcription_ready\","
				 "\"properties\":{\"transcript\":[{\"id\":%s,"
				 "\"role\":\"user\",\"content\":\"\"}]}}",
				 ids[i][0]);
			doc = cJSON_Parse(body);
			CHECK(transcript_validate(doc, path, sizeof(path), msg,
						  sizeof(msg)) ==
				  (ids[i][1][0] == '1'),
			      "id %s", ids[i][0]);
			cJSON_Delete(doc);
		}
	}
	return check_done("test_validate");
}
