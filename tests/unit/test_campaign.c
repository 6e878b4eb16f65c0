/* Campaign batches: RFC 3339 instants, the shared validation, the rules
 * (end time, inbox, lead, template, split) and the parts' COPY text. */
#include <stdlib.h>

#include "../../common/campaign.h"
#include "../../worker/handlers/campaign_rules.h"
#include "check.h"

static const struct {
	const char *text;
	bool ok;
	long long ms;
} times[] = {
    {"2026-11-23T20:00:00Z", true, 1795464000000LL},
    {"2026-11-23T21:00:00+01:00", true, 1795464000000LL},
    {"2026-11-23T14:30:00-05:30", true, 1795464000000LL},
    {"2026-11-23t20:00:00.250z", true, 1795464000250LL},
    {"2026-11-23 20:00:00.5+00:00", true, 1795464000500LL},
    {"1970-01-01T00:00:00Z", true, 0},
    {"2024-02-29T00:00:00Z", true, 1709164800000LL},
    {"2026-11-23T20:00:00", false, 0},	    /* no offset */
    {"2026-11-23T20:00:00+0100", false, 0}, /* offset without colon */
    {"2025-02-29T00:00:00Z", false, 0},	    /* not a leap year */
    {"2026-13-01T00:00:00Z", false, 0},
    {"2026-11-23T24:00:00Z", false, 0},
    {"2026-11-23", false, 0},
    {"2026-11-23T20:00:00Zjunk", false, 0},
    {"2026-11-23T20:00:00.Z", false, 0},
    {"2026-11-23T20:00:00.999999999Z", true, 1795464000999LL},
    {"1969-12-31T23:59:59.9995Z", true, -1}, /* floor, not toward 0 */
};

/* The exact instant, in µs, and why one is refused. */
static const struct {
	const char *text;
	long long us;	 /* when why is NULL */
	const char *why; /* a word of the reason, NULL when accepted */
	const char *utc; /* campaign_time_format, when accepted */
} times_us[] = {
    {"2026-11-23T20:00:00.999999999Z", 1795464000999999LL, NULL,
     "2026-11-23T20:00:00.999999Z"},
    {"2026-11-23T20:00:00.1234567+00:00", 1795464000123456LL, NULL,
     "2026-11-23T20:00:00.123456Z"},
    {"9999-12-31T23:59:59.999999Z", 253402300799999999LL, NULL,
     "9999-12-31T23:59:59.999999Z"},
    {"9999-12-31T23:59:59.9999999Z", 253402300799999999LL, NULL,
     "9999-12-31T23:59:59.999999Z"}, /* cut, never rounded into 10000 */
    {"0001-01-01T00:00:00Z", -62135596800000000LL, NULL,
     "0001-01-01T00:00:00.000000Z"},
    {"0000-12-31T23:00:00-01:00", -62135596800000000LL, NULL,
     "0001-01-01T00:00:00.000000Z"},
    {"1969-12-31T23:59:59.5Z", -500000LL, NULL, "1969-12-31T23:59:59.500000Z"},
    {"9999-12-31T23:59:59-23:59", 0, "0001 to 9999", NULL},
    {"0001-01-01T00:00:00+00:01", 0, "0001 to 9999", NULL},
    {"0000-06-01T00:00:00Z", 0, "0001 to 9999", NULL},
    /* leap seconds: only the real ones, 23:59:60 in UTC */
    {"2016-12-31T23:59:60Z", 1483228799999999LL, NULL,
     "2016-12-31T23:59:59.999999Z"},
    {"2017-01-01T00:59:60+01:00", 1483228799999999LL, NULL,
     "2016-12-31T23:59:59.999999Z"},
    {"1972-06-30T23:59:60.5Z", 78796799999999LL, NULL,
     "1972-06-30T23:59:59.999999Z"},
    {"2015-06-30T18:59:60-05:00", 1435708799999999LL, NULL,
     "2015-06-30T23:59:59.999999Z"},
    {"2026-11-23T23:59:60Z", 0, "leap second", NULL},
    {"2016-12-31T23:58:60Z", 0, "leap second", NULL},
    {"2016-12-31T23:59:60+01:00", 0, "leap second", NULL},
    {"1980-12-31T23:59:60Z", 0, "leap second", NULL}, /* none that year */
    {"2026-11-23T20:00:00", 0, "RFC 3339", NULL},
};

static const char *const bad_batches[][2] = {
    /* body, the path of the first problem */
    {"[]", "$"},
    {"{\"workspace_id\":\"w\",\"inbox_id\":\"i\",\"end_time\":"
     "\"2026-01-01T00:00:00Z\",\"run_total\":1,\"template\":\"t\","
     "\"messages\":[{\"message_id\":\"m\",\"lead_id\":\"l\"}]}",
     "$.run_id"},
    {"{\"run_id\":\"r\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
     "\"end_time\":\"2026-01-01T00:00:00\",\"run_total\":1,"
     "\"template\":\"t\",\"messages\":[{\"message_id\":\"m\","
     "\"lead_id\":\"l\"}]}",
     "$.end_time"},
    {"{\"run_id\":\"r\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
     "\"end_time\":\"2026-01-01T00:00:00Z\",\"run_total\":\"1\","
     "\"template\":\"t\",\"messages\":[{\"message_id\":\"m\","
     "\"lead_id\":\"l\"}]}",
     "$.run_total"},
    {"{\"run_id\":\"r\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
     "\"end_time\":\"2026-01-01T00:00:00Z\",\"run_total\":1,"
     "\"template\":\"t\",\"messages\":[]}",
     "$.messages"},
    {"{\"run_id\":\"r\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
     "\"end_time\":\"2026-01-01T00:00:00Z\",\"run_total\":1,"
     "\"template\":\"t\",\"max_split_parts\":0,\"messages\":[{"
     "\"message_id\":\"m\",\"lead_id\":\"l\"}]}",
     "$.max_split_parts"},
    {"{\"run_id\":\"r\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
     "\"end_time\":\"2026-01-01T00:00:00Z\",\"run_total\":1,"
     "\"template\":\"t\",\"messages\":[{\"message_id\":\"m\","
     "\"lead_id\":\"\"}]}",
     "$.messages[0].lead_id"},
    {"{\"run_id\":\"r\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
     "\"end_time\":\"9999-12-31T23:59:59-23:59\",\"run_total\":1,"
     "\"template\":\"t\",\"messages\":[{\"message_id\":\"m\","
     "\"lead_id\":\"l\"}]}",
     "$.end_time"},
    {"{\"run_id\":\"r\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
     "\"end_time\":\"2026-01-01T00:00:00Z\",\"run_total\":2,"
     "\"template\":\"t\",\"messages\":[{\"message_id\":7,"
     "\"lead_id\":\"l\"},{\"message_id\":\"7\",\"lead_id\":\"l\"}]}",
     "$.messages[1].message_id"},
};

/* Repeated message ids: the path of each later copy, the first's path in
 * its message. */
static const struct {
	const char *ids; /* the message_id values, as JSON */
	size_t n_errs;
	const char *path[2];
	const char *first[2];
} dups[] = {
    {"\"a\",\"b\",\"c\"", 0, {NULL}, {NULL}},
    {"7,\"7\"", 1, {"$.messages[1].message_id"}, {"$.messages[0]"}},
    {"\"7\",7", 1, {"$.messages[1].message_id"}, {"$.messages[0]"}},
    {"\"x\",\"y\",\"x\",\"x\"",
     2,
     {"$.messages[2].message_id", "$.messages[3].message_id"},
     {"$.messages[0]", "$.messages[0]"}},
    {"\"07\",7,\"7.0\"", 0, {NULL}, {NULL}}, /* different texts */
    {"1e2,100", 1, {"$.messages[1].message_id"}, {"$.messages[0]"}},
};

static void test_unique(void)
{
	for (size_t i = 0; i < sizeof(dups) / sizeof(dups[0]); i++) {
		char body[1024], list[512] = "", one[128];
		const char *p = dups[i].ids;
		struct campaign_error errs[4];
		struct campaign_batch b;
		size_t n = 0, k = 0;
		cJSON *doc;
		bool ok;

		/* {"message_id": <id>, "lead_id": "l"} for each id */
		while (*p) {
			const char *comma = strchr(p, ',');
			size_t len = comma ? (size_t)(comma - p) : strlen(p);

			snprintf(one, sizeof(one),
				 "%s{\"message_id\":%.*s,\"lead_id\":\"l\"}",
				 k++ ? "," : "", (int)len, p);
			strncat(list, one, sizeof(list) - strlen(list) - 1);
			p += len + (comma ? 1 : 0);
		}
		snprintf(body, sizeof(body),
			 "{\"run_id\":\"r\",\"workspace_id\":\"w\","
			 "\"inbox_id\":\"i\",\"end_time\":"
			 "\"2026-01-01T00:00:00Z\",\"run_total\":9,"
			 "\"template\":\"t\",\"messages\":[%s]}",
			 list);
		doc = cJSON_Parse(body);
		CHECK(doc != NULL, "dups %zu parses: %s", i, body);
		ok = campaign_parse(doc, 1000, &b, errs, 4, &n);
		CHECK(ok == (dups[i].n_errs == 0), "dups %zu: ok %d", i, ok);
		CHECK(n == dups[i].n_errs, "dups %zu: %zu errors", i, n);
		for (size_t e = 0; e < n && e < dups[i].n_errs; e++) {
			CHECK_STR(errs[e].path, dups[i].path[e], "dup path");
			CHECK(strstr(errs[e].message, dups[i].first[e]) != NULL,
			      "dups %zu: \"%s\" names %s", i, errs[e].message,
			      dups[i].first[e]);
		}
		campaign_batch_free(&b);
		cJSON_Delete(doc);
	}
}

static void test_times_us(void)
{
	for (size_t i = 0; i < sizeof(times_us) / sizeof(times_us[0]); i++) {
		int64_t us = -1;
		const char *why = NULL;
		char text[CAMPAIGN_TIME_TEXT];
		bool ok = campaign_time_parse_us(times_us[i].text, &us, &why);

		CHECK(ok == (times_us[i].why == NULL), "%s: parsed %d (%s)",
		      times_us[i].text, ok, why ? why : "");
		if (!ok && times_us[i].why)
			CHECK(why && strstr(why, times_us[i].why),
			      "%s: why \"%s\" lacks \"%s\"", times_us[i].text,
			      why ? why : "(null)", times_us[i].why);
		if (!ok || times_us[i].why)
			continue;
		CHECK(us == times_us[i].us, "%s: %lld", times_us[i].text,
		      (long long)us);
		campaign_time_format(us, text);
		CHECK_STR(text, times_us[i].utc, times_us[i].text);
	}
}

static void test_parse(void)
{
	const char *good =
	    "{\"run_id\":\"r1\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
	    "\"end_time\":\"2026-11-23T21:00:00+01:00\",\"run_total\":3,"
	    "\"template\":\"Hi {{lead.name}}\",\"split_max_chars\":20,"
	    "\"messages\":[{\"message_id\":\"m1\",\"lead_id\":\"l1\","
	    "\"vars\":{\"a\":1}},{\"message_id\":42,\"lead_id\":7}]}";
	const char *many_bad =
	    "{\"run_id\":\"r1\",\"workspace_id\":\"w\",\"inbox_id\":\"i\","
	    "\"end_time\":\"2026-11-23T21:00:00+01:00\",\"run_total\":3,"
	    "\"template\":\"t\",\"messages\":[{\"message_id\":\"m1\","
	    "\"lead_id\":\"l1\"},{\"lead_id\":\"l2\"},{\"message_id\":\"m3\","
	    "\"lead_id\":1.5},\"x\"]}";
	struct campaign_error errs[8];
	struct campaign_batch b;
	size_t n = 0;
	cJSON *doc = cJSON_Parse(good);

	CHECK(campaign_parse(doc, 1000, &b, errs, 8, &n), "good batch: %s",
	      n ? errs[0].path : "");
	CHECK(b.n_messages == 2 && b.run_total == 3, "fields");
	CHECK(b.end_time_ms == 1795464000000LL, "end time %lld",
	      (long long)b.end_time_ms);
	CHECK(b.max_split_parts == CAMPAIGN_DEFAULT_MAX_PARTS &&
		  b.split_max_chars == 20,
	      "defaults");
	CHECK_STR(b.messages[1].message_id, "42", "integer message id");
	CHECK_STR(b.messages[1].lead_id, "7", "integer lead id");
	campaign_batch_free(&b);
	CHECK(!campaign_parse(doc, 1, &b, errs, 8, &n) && n == 1,
	      "over the message limit accepted (%zu)", n);
	CHECK_STR(errs[0].path, "$.messages", "limit path");
	campaign_batch_free(&b);
	CHECK(campaign_parse(doc, 0, &b, errs, 8, &n), "no limit");
	campaign_batch_free(&b);
	cJSON_Delete(doc);

	doc = cJSON_Parse(many_bad);
	CHECK(!campaign_parse(doc, 1000, &b, errs, 8, &n) && n == 3,
	      "every bad item reported: %zu", n);
	CHECK(errs[0].index == 1, "index %d", errs[0].index);
	CHECK_STR(errs[0].path, "$.messages[1].message_id", "missing id");
	CHECK_STR(errs[1].path, "$.messages[2].lead_id", "fractional id");
	CHECK_STR(errs[2].path, "$.messages[3]", "not an object");
	campaign_batch_free(&b);
	cJSON_Delete(doc);

	for (size_t i = 0; i < sizeof(bad_batches) / sizeof(bad_batches[0]);
	     i++) {
		doc = cJSON_Parse(bad_batches[i][0]);
		CHECK(!campaign_parse(doc, 1000, &b, errs, 8, &n) && n >= 1,
		      "bad batch %zu accepted", i);
		if (n >= 1)
			CHECK_STR(errs[0].path, bad_batches[i][1], "path");
		campaign_batch_free(&b);
		cJSON_Delete(doc);
	}
}

/* The text source: template or prompt (exactly one), and the model's
 * fields only with a prompt. Each body is the batch's top level minus
 * the text source, followed by these members. */
#define M64 "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm"
#define MODEL_256 M64 M64 M64 M64

static const struct {
	const char *members;
	const char *path[3]; /* every problem's path, in order; none: valid */
	/* when valid */
	const char *system, *user, *model;
	int max_tokens;
	bool has_temperature;
	double temperature;
} sources[] = {
    /* valid */
    {.members = "\"template\":\"Hi {{lead.name}}\""},
    {.members = "\"prompt\":{\"user\":\"Write to {{lead.name}}\"}",
     .user = "Write to {{lead.name}}"},
    {.members =
	 "\"prompt\":{\"system\":\"Be brief.\",\"user\":\"u {{vars.x}}\"},"
	 "\"model\":\"openai/gpt-4o-mini\",\"max_tokens\":8192,"
	 "\"temperature\":0.7",
     .system = "Be brief.",
     .user = "u {{vars.x}}",
     .model = "openai/gpt-4o-mini",
     .max_tokens = 8192,
     .has_temperature = true,
     .temperature = 0.7},
    {.members = "\"prompt\":{\"user\":\"u\"},\"max_tokens\":1,"
		"\"temperature\":0",
     .user = "u",
     .max_tokens = 1,
     .has_temperature = true,
     .temperature = 0.0},
    {.members = "\"prompt\":{\"user\":\"u\"},\"temperature\":2",
     .user = "u",
     .has_temperature = true,
     .temperature = 2.0},
    /* an unclosed {{ is text, as in a template */
    {.members = "\"prompt\":{\"user\":\"open {{ never closed\"}",
     .user = "open {{ never closed"},
    /* neither, both */
    {.members = "\"campaign_id\":\"c\"", .path = {"$.template"}},
    {.members = "\"template\":\"t\",\"prompt\":{\"user\":\"u\"}",
     .path = {"$.prompt"}},
    {.members = "\"template\":null,\"prompt\":{\"user\":\"u\"}",
     .path = {"$.prompt"}},
    /* the prompt itself */
    {.members = "\"prompt\":\"Write to {{lead.name}}\"", .path = {"$.prompt"}},
    {.members = "\"prompt\":null", .path = {"$.prompt"}},
    {.members = "\"prompt\":{}", .path = {"$.prompt.user"}},
    {.members = "\"prompt\":{\"system\":\"s\"}", .path = {"$.prompt.user"}},
    {.members = "\"prompt\":{\"user\":\"\"}", .path = {"$.prompt.user"}},
    {.members = "\"prompt\":{\"user\":7}", .path = {"$.prompt.user"}},
    {.members = "\"prompt\":{\"user\":\"u\",\"system\":\"\"}",
     .path = {"$.prompt.system"}},
    {.members = "\"prompt\":{\"user\":\"u\",\"system\":[\"s\"]}",
     .path = {"$.prompt.system"}},
    {.members = "\"prompt\":{\"user\":\"u\",\"assistant\":\"a\"}",
     .path = {"$.prompt.assistant"}},
    {.members = "\"prompt\":{\"User\":\"u\"}",
     .path = {"$.prompt.User", "$.prompt.user"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"model\":\"" MODEL_256 "\"",
     .user = "u",
     .model = MODEL_256},
    /* the model's fields */
    {.members = "\"prompt\":{\"user\":\"u\"},\"model\":\"" MODEL_256 "m\"",
     .path = {"$.model"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"model\":\"\"",
     .path = {"$.model"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"model\":5", .path = {"$.model"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"max_tokens\":0",
     .path = {"$.max_tokens"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"max_tokens\":8193",
     .path = {"$.max_tokens"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"max_tokens\":100.5",
     .path = {"$.max_tokens"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"max_tokens\":\"100\"",
     .path = {"$.max_tokens"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"temperature\":-0.1",
     .path = {"$.temperature"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"temperature\":2.0001",
     .path = {"$.temperature"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"temperature\":\"1\"",
     .path = {"$.temperature"}},
    {.members = "\"prompt\":{\"user\":\"u\"},\"temperature\":null",
     .path = {"$.temperature"}},
    /* ... and without a prompt */
    {.members = "\"template\":\"t\",\"model\":\"m\"", .path = {"$.model"}},
    {.members = "\"template\":\"t\",\"max_tokens\":100,\"temperature\":1",
     .path = {"$.max_tokens", "$.temperature"}},
    {.members = "\"model\":\"m\"", .path = {"$.template", "$.model"}},
};

static void test_text_source(void)
{
	for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]); i++) {
		char body[2048];
		struct campaign_error errs[4];
		struct campaign_batch b;
		size_t n = 0, want = 0;
		cJSON *doc;
		bool ok;

		snprintf(body, sizeof(body),
			 "{\"run_id\":\"r\",\"workspace_id\":\"w\","
			 "\"inbox_id\":\"i\",\"end_time\":"
			 "\"2026-01-01T00:00:00Z\",\"run_total\":1,"
			 "\"messages\":[{\"message_id\":\"m\","
			 "\"lead_id\":\"l\"}],%s}",
			 sources[i].members);
		doc = cJSON_Parse(body);
		CHECK(doc != NULL, "source %zu parses: %s", i, body);
		while (want < 3 && sources[i].path[want])
			want++;
		ok = campaign_parse(doc, 1000, &b, errs, 4, &n);
		CHECK(ok == (want == 0), "source %zu (%s): ok %d (%s %s)", i,
		      sources[i].members, ok, n ? errs[0].path : "",
		      n ? errs[0].message : "");
		CHECK(n == want, "source %zu (%s): %zu problems, want %zu", i,
		      sources[i].members, n, want);
		for (size_t e = 0; e < n && e < want; e++) {
			CHECK_STR(errs[e].path, sources[i].path[e],
				  sources[i].members);
			CHECK(errs[e].index == -1 && errs[e].message[0],
			      "source %zu: index %d, message \"%s\"", i,
			      errs[e].index, errs[e].message);
		}
		if (ok && want == 0) {
			bool is_prompt = sources[i].user != NULL;

			CHECK((b.template_text != NULL) != is_prompt,
			      "source %zu: exactly one of template and prompt",
			      i);
			if (is_prompt)
				CHECK_STR(b.prompt_user, sources[i].user,
					  "prompt.user");
			else
				CHECK(b.prompt_user == NULL, "no prompt");
			if (sources[i].system)
				CHECK_STR(b.prompt_system, sources[i].system,
					  "prompt.system");
			else
				CHECK(b.prompt_system == NULL,
				      "source %zu: system absent", i);
			if (sources[i].model)
				CHECK_STR(b.model, sources[i].model, "model");
			else
				CHECK(b.model == NULL,
				      "source %zu: model absent", i);
			CHECK(b.max_tokens == sources[i].max_tokens,
			      "source %zu: max_tokens %d", i, b.max_tokens);
			CHECK(b.has_temperature == sources[i].has_temperature &&
				  (!b.has_temperature ||
				   b.temperature == sources[i].temperature),
			      "source %zu: temperature %d %g", i,
			      b.has_temperature, b.temperature);
		}
		campaign_batch_free(&b);
		cJSON_Delete(doc);
	}
}

/* Each prompt text is bounded like a template: CAMPAIGN_TEMPLATE_MAX
 * bytes pass, one more does not. */
static void test_prompt_size(void)
{
	const char *fields[] = {"user", "system"};

	for (size_t f = 0; f < 2; f++) {
		for (size_t extra = 0; extra < 2; extra++) {
			size_t len = CAMPAIGN_TEMPLATE_MAX + extra;
			char *text = xmalloc(len + 1);
			char path[32];
			struct campaign_error errs[4];
			struct campaign_batch b;
			cJSON *doc, *prompt;
			size_t n = 0;
			bool ok;

			memset(text, 'x', len);
			text[len] = '\0';
			doc = cJSON_Parse(
			    "{\"run_id\":\"r\",\"workspace_id\":\"w\","
			    "\"inbox_id\":\"i\",\"end_time\":"
			    "\"2026-01-01T00:00:00Z\",\"run_total\":1,"
			    "\"messages\":[{\"message_id\":\"m\","
			    "\"lead_id\":\"l\"}]}");
			prompt = cJSON_AddObjectToObject(doc, "prompt");
			cJSON_AddStringToObject(prompt, "user",
						f == 0 ? text : "u");
			if (f == 1)
				cJSON_AddStringToObject(prompt, "system", text);
			ok = campaign_parse(doc, 1000, &b, errs, 4, &n);
			snprintf(path, sizeof(path), "$.prompt.%s", fields[f]);
			CHECK(ok == (extra == 0), "%s of %zu bytes: ok %d",
			      fields[f], len, ok);
			if (!ok && n)
				CHECK_STR(errs[0].path, path, "size path");
			campaign_batch_free(&b);
			cJSON_Delete(doc);
			free(text);
		}
	}
}

static const char CTX[] =
    "{\"lead\":{\"id\":\"l1\",\"name\":\"Ana\",\"deleted_at\":null,"
    "\"score\":7,\"attributes\":{\"n\":12345678901234567890}},\"last_"
    "conversation\":{\"status\":\"ended\"},"
    "\"tags\":[\"a\",\"b\"]}";

static const struct {
	const char *tmpl;
	const char *want; /* NULL: fails with this error */
	const char *want_error;
} renders[] = {
    {"Hi {{lead.name}}!", "Hi Ana!", NULL},
    {"{{ lead.name }} / {{last_conversation.status}}", "Ana / ended", NULL},
    {"score {{lead.score}} {{vars.offer}}", "score 7 20% off", NULL},
    {"{{offer}}", "20% off", NULL}, /* vars reached without the prefix */
    {"{{tags.1}}", "b", NULL},
    {"no placeholders", "no placeholders", NULL},
    {"open {{ never closed", "open {{ never closed", NULL},
    {"{{lead.phone}}", NULL, "missing_var:lead.phone"},
    {"{{lead.deleted_at}}", NULL, "missing_var:lead.deleted_at"}, /* null */
    {"{{lead}}", NULL, "missing_var:lead"}, /* an object */
    {"{{vars.name}}", NULL, "missing_var:vars.name"},
    /* numbers: integers in full, without exponent, up to 2^53 */
    {"{{vars.big}}", "9007199254740991", NULL},
    {"{{vars.neg}}", "-9007199254740991", NULL},
    {"{{vars.e}}", "1000000", NULL}, /* sent as 1e6 */
    {"{{vars.f}}", "1500", NULL},    /* sent as 1500.0 */
    {"{{vars.mz}}", "0", NULL},	     /* sent as -0 */
    {"{{vars.half}}", "0.5", NULL},
    {"{{vars.pi}}", "3.14159", NULL},
    {"{{vars.t}} {{vars.no}}", "true false", NULL},
    {"{{vars.huge}}", NULL, "inexact_number:vars.huge"},
    {"{{vars.two53}}", NULL, "inexact_number:vars.two53"},
    {"{{lead.attributes.n}}", NULL, "inexact_number:lead.attributes.n"},
};

static void test_render(void)
{
	cJSON *ctx = cJSON_Parse(CTX);
	cJSON *vars = cJSON_Parse(
	    "{\"offer\":\"20% off\",\"big\":9007199254740991,"
	    "\"neg\":-9007199254740991,\"e\":1e6,\"f\":1500.0,\"mz\":-0,"
	    "\"half\":0.5,\"pi\":3.14159,\"t\":true,\"no\":false,"
	    "\"huge\":12345678901234567890,\"two53\":9007199254740992}");
	struct buf out;
	char error[64];

	buf_init(&out);
	for (size_t i = 0; i < sizeof(renders) / sizeof(renders[0]); i++) {
		bool ok = campaign_render(renders[i].tmpl, ctx, vars, &out,
					  error, sizeof(error));

		if (renders[i].want) {
			CHECK(ok, "render %zu failed: %s", i, error);
			CHECK_STR(out.data, renders[i].want, renders[i].tmpl);
		} else {
			CHECK(!ok, "render %zu succeeded", i);
			CHECK_STR(error, renders[i].want_error,
				  renders[i].tmpl);
		}
	}
	buf_free(&out);
	cJSON_Delete(ctx);
	cJSON_Delete(vars);
}

static const struct {
	const char *text;
	int max;
	size_t n;
	const char *parts[5];
} splits[] = {
    {"one two three", 7, 2, {"one two", "three"}},
    {"one two three", 13, 1, {"one two three"}},
    {"  lead  and trail  ", 9, 2, {"lead  and", "trail"}},
    {"abcdefghij", 4, 3, {"abcd", "efgh", "ij"}},
    {"ab abcdefg c", 3, 4, {"ab", "abc", "def", "g c"}},
    {"été à Noël", 5, 2, {"été à", "Noël"}}, /* code points, not bytes */
    {"line\none", 20, 1, {"line\none"}},
    {"   ", 5, 0, {NULL}},
};

static void test_split(void)
{
	for (size_t i = 0; i < sizeof(splits) / sizeof(splits[0]); i++) {
		struct rule_result r;

		rule_result_init(&r);
		buf_puts(&r.text, splits[i].text);
		campaign_split(&r, splits[i].max);
		CHECK(r.n_parts == splits[i].n, "split %zu: %zu parts", i,
		      r.n_parts);
		for (size_t k = 0; k < r.n_parts && k < splits[i].n; k++) {
			char got[64];

			snprintf(got, sizeof(got), "%.*s", (int)r.part_len[k],
				 r.text.data + r.part_off[k]);
			CHECK_STR(got, splits[i].parts[k], splits[i].text);
		}
		rule_result_free(&r);
	}
}

static void test_evaluate(void)
{
	cJSON *ctx = cJSON_Parse(CTX);
	cJSON *deleted = cJSON_Parse("{\"lead\":{\"name\":\"X\",\"deleted_at\":"
				     "\"2026-01-01T00:00:00Z\"}}");
	struct rule_input base = {
	    .now_ms = 1000,
	    .end_time_ms = 2000,
	    .inbox = INBOX_CONNECTED,
	    .lead = LEAD_FOUND,
	    .ctx = ctx,
	    .template_text = "Hello {{lead.name}}, this is a long message",
	    .max_split_parts = 3,
	    .split_max_chars = 20,
	};
	const struct {
		const char *name;
		struct rule_input in;
		enum msg_status status;
		const char *error;
		size_t parts;
	} cases[] = {
	    {"ready", base, MSG_READY, "", 2},
	    {"expired first",
	     {.now_ms = 2001,
	      .end_time_ms = 2000,
	      .inbox = INBOX_MISSING,
	      .lead = LEAD_NOT_FOUND},
	     MSG_EXPIRED,
	     "",
	     0},
	    {"inbox missing",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_MISSING,
	      .lead = LEAD_NOT_FOUND},
	     MSG_PAUSED,
	     "inbox_missing",
	     0},
	    {"inbox disconnected",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_DISCONNECTED,
	      .lead = LEAD_FOUND},
	     MSG_PAUSED,
	     "inbox_disconnected",
	     0},
	    {"unavailable",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_UNAVAILABLE},
	     MSG_FAILED,
	     "context_unavailable",
	     0},
	    {"not found",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_NOT_FOUND},
	     MSG_FAILED,
	     "lead_not_found",
	     0},
	    {"deleted",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = deleted,
	      .template_text = "x",
	      .max_split_parts = 1,
	      .split_max_chars = 5},
	     MSG_FAILED,
	     "lead_deleted",
	     0},
	    {"missing var",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .template_text = "{{vars.offer}}",
	      .max_split_parts = 1,
	      .split_max_chars = 5},
	     MSG_FAILED,
	     "missing_var:vars.offer",
	     0},
	    {"too many parts",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .template_text = "aa bb cc dd",
	      .max_split_parts = 3,
	      .split_max_chars = 2},
	     MSG_FAILED,
	     "too_many_parts",
	     4},
	    /* A batch with a prompt: the same rules before the text, then the
	     * prompt renders, a model is known, the model wrote it. */
	    {"prompt: composed text split",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .prompt_system = "Be brief with {{lead.name}}",
	      .prompt_user = "Write to {{lead.name}}",
	      .has_model = true,
	      .composed = "Hola Ana, vuelve pronto",
	      .max_split_parts = 3,
	      .split_max_chars = 10},
	     MSG_READY,
	     "",
	     3},
	    {"prompt: missing var in user, before the model",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .prompt_user = "Write to {{vars.offer}}",
	      .has_model = false,
	      .max_split_parts = 3,
	      .split_max_chars = 10},
	     MSG_FAILED,
	     "missing_var:vars.offer",
	     0},
	    {"prompt: missing var in system",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .prompt_system = "{{lead.nickname}}",
	      .prompt_user = "Write to {{lead.name}}",
	      .has_model = true,
	      .composed = "x",
	      .max_split_parts = 3,
	      .split_max_chars = 10},
	     MSG_FAILED,
	     "missing_var:lead.nickname",
	     0},
	    {"prompt: no model",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .prompt_user = "Write to {{lead.name}}",
	      .max_split_parts = 3,
	      .split_max_chars = 10},
	     MSG_FAILED,
	     "no_model",
	     0},
	    {"prompt: the model failed",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .prompt_user = "Write to {{lead.name}}",
	      .has_model = true,
	      .compose_error = "compose_failed:429",
	      .max_split_parts = 3,
	      .split_max_chars = 10},
	     MSG_FAILED,
	     "compose_failed:429",
	     0},
	    {"prompt: expired before anything",
	     {.now_ms = 3,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .prompt_user = "Write to {{lead.name}}",
	      .has_model = true,
	      .composed = "x",
	      .max_split_parts = 3,
	      .split_max_chars = 10},
	     MSG_EXPIRED,
	     "",
	     0},
	    {"prompt: composed text too long",
	     {.now_ms = 1,
	      .end_time_ms = 2,
	      .inbox = INBOX_CONNECTED,
	      .lead = LEAD_FOUND,
	      .ctx = ctx,
	      .prompt_user = "Write to {{lead.name}}",
	      .has_model = true,
	      .composed = "aa bb cc dd",
	      .max_split_parts = 3,
	      .split_max_chars = 2},
	     MSG_FAILED,
	     "too_many_parts",
	     4},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct rule_result r;

		rule_result_init(&r);
		campaign_evaluate(&cases[i].in, &r);
		CHECK(r.status == cases[i].status, "%s: status %s",
		      cases[i].name, msg_status_names[r.status]);
		CHECK_STR(r.error, cases[i].error, cases[i].name);
		if (cases[i].parts)
			CHECK(r.n_parts == cases[i].parts, "%s: %zu parts",
			      cases[i].name, r.n_parts);
		rule_result_free(&r);
	}
	cJSON_Delete(ctx);
	cJSON_Delete(deleted);
}

static void test_parts_copy(void)
{
	struct rule_result r;
	struct buf b;

	rule_result_init(&r);
	buf_init(&b);
	buf_puts(&r.text, "say \"hi\" back\\slash\ttab");
	campaign_split(&r, 8);
	campaign_parts_copy(&r, &b);
	/* "say \"hi\"" | "back\sla" | "sh<tab>tab", array- then COPY-escaped */
	CHECK_STR(b.data,
		  "{\"say \\\\\"hi\\\\\"\",\"back\\\\\\\\sla\",\"sh\\ttab\"}",
		  "parts literal");
	buf_free(&b);
	rule_result_free(&r);
}

int main(void)
{
	for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
		int64_t ms = -1;
		bool ok = campaign_time_parse(times[i].text, &ms);

		CHECK(ok == times[i].ok, "%s: parsed %d", times[i].text, ok);
		if (ok && times[i].ok)
			CHECK(ms == times[i].ms, "%s: %lld", times[i].text,
			      (long long)ms);
	}
	test_times_us();
	test_parse();
	test_unique();
	test_text_source();
	test_prompt_size();
	test_render();
	test_split();
	test_evaluate();
	test_parts_copy();
	return check_done("test_campaign");
}
