/* Transcript records → COPY rows: ids, escaping, duplicates, rejects. */
#include <stdlib.h>

#include "../../worker/handlers/transcript.h"
#include "check.h"

static const struct {
	const char *name;
	const char *json;
	bool ok;
	size_t messages;
	const char *rows_have;	/* substring of the message rows */
	const char *status_col; /* substring of the conversation row */
} cases[] = {
    {"seed shape with ids",
     "{\"conversation_id\":\"c1\",\"event_type\":\"application.transcription_"
     "ready\","
     "\"properties\":{\"transcript\":[{\"id\":\"m1\",\"role\":\"user\","
     "\"content\":\"hi\"},"
     "{\"id\":\"m2\",\"role\":\"assistant\",\"content\":\"hello\"}]}}",
     true, 2, "c1\tm2\t1\tassistant\thello\t",
     "\tapplication.transcription_ready\t\\N\tt\t"},
    {"vendor shape, no ids, type spelling",
     "{\"conversation_id\":\"c2\",\"type\":\"application.transcription_ready\","
     "\"properties\":{\"transcript\":[{\"role\":\"system\",\"content\":\"be "
     "brief\"},"
     "{\"role\":\"user\",\"content\":\"a\\tb\\nc\\\\d\"}]}}",
     true, 2, "\t1\tuser\ta\\tb\\nc\\\\d\t", NULL},
    {"numeric ids",
     "{\"conversation_id\":\"c3\",\"event_type\":\"application.transcription_"
     "ready\","
     "\"properties\":{\"transcript\":[{\"id\":42,\"role\":\"user\",\"content\":"
     "\"x\"}]}}",
     true, 1, "c3\t42\t0\tuser\tx\t", NULL},
    {"lifecycle event sets status",
     "{\"conversation_id\":\"c4\",\"event_type\":\"system.shutdown\"}", true, 0,
     NULL, "\tsystem.shutdown\tended\tf\t"},
    {"ready without transcript",
     "{\"conversation_id\":\"c5\",\"event_type\":\"application.transcription_"
     "ready\"}",
     true, 0, NULL, "\tt\t"},
    {"not json", "{\"conversation_id\":", false, 0, NULL, NULL},
    {"array", "[1,2]", false, 0, NULL, NULL},
    {"no conversation", "{\"event_type\":\"system.shutdown\"}", false, 0, NULL,
     NULL},
    {"no event type", "{\"conversation_id\":\"c\"}", false, 0, NULL, NULL},
    {"entry without content",
     "{\"conversation_id\":\"c\",\"event_type\":\"application.transcription_"
     "ready\","
     "\"properties\":{\"transcript\":[{\"role\":\"user\"}]}}",
     false, 0, NULL, NULL},
    {"transcript not array",
     "{\"conversation_id\":\"c\",\"event_type\":\"application.transcription_"
     "ready\","
     "\"properties\":{\"transcript\":{}}}",
     false, 0, NULL, NULL},
    {"object id",
     "{\"conversation_id\":\"c\",\"event_type\":\"application.transcription_"
     "ready\","
     "\"properties\":{\"transcript\":[{\"id\":{},\"role\":\"user\",\"content\":"
     "\"x\"}]}}",
     false, 0, NULL, NULL},
};

int main(void)
{
	struct transcript_rows rows;
	char a[TRANSCRIPT_ID_LEN], b[TRANSCRIPT_ID_LEN], err[256];

	/* Deterministic ids: same input, same id; any change, another. */
	transcript_entry_id("conv", 3, a);
	transcript_entry_id("conv", 3, b);
	CHECK_STR(a, b, "same conversation and position");
	CHECK(strncmp(a, "gen-", 4) == 0 && strlen(a) == 36, "shape %s", a);
	transcript_entry_id("conv", 4, b);
	CHECK(strcmp(a, b) != 0, "position changes the id");
	transcript_entry_id("conv1", 2, a);
	transcript_entry_id("conv", 12, b);
	CHECK(strcmp(a, b) != 0, "(conv1,2) and (conv,12) differ");

	CHECK(transcript_status_for("system.replica_joined") != NULL,
	      "replica_joined sets a status");
	CHECK(transcript_status_for("application.recording_ready") == NULL,
	      "recording_ready keeps the status");

	transcript_rows_init(&rows);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t before = rows.messages.len,
		       cbefore = rows.conversations.len;
		size_t nbefore = rows.n_messages;
		char *cid = NULL;
		bool ok = transcript_handle(
		    cases[i].json, strlen(cases[i].json), "tavus",
		    1700000000000LL, (int64_t)i, &rows, &cid, err, sizeof(err));

		CHECK(ok == cases[i].ok, "%s: %s", cases[i].name, err);
		if (!ok) {
			CHECK(rows.messages.len == before &&
				  rows.conversations.len == cbefore,
			      "%s: a rejected record left rows behind",
			      cases[i].name);
			CHECK(cid == NULL, "%s: cid set", cases[i].name);
			continue;
		}
		CHECK(rows.n_messages - nbefore == cases[i].messages,
		      "%s: %zu messages", cases[i].name,
		      rows.n_messages - nbefore);
		if (cases[i].rows_have)
			CHECK(strstr(rows.messages.data + before,
				     cases[i].rows_have) != NULL,
			      "%s: rows lack [%s]:\n%s", cases[i].name,
			      cases[i].rows_have, rows.messages.data + before);
		if (cases[i].status_col)
			CHECK(strstr(rows.conversations.data + cbefore,
				     cases[i].status_col) != NULL,
			      "%s: conversation row lacks [%s]: %s",
			      cases[i].name, cases[i].status_col,
			      rows.conversations.data + cbefore);
		free(cid);
	}
	/* The same transcript twice gives the same rows (replay safety). */
	{
		const char *j = cases[1].json;
		char *c1 = NULL, *c2 = NULL;
		char *first;

		transcript_rows_reset(&rows);
		CHECK(transcript_handle(j, strlen(j), "s", 1, 0, &rows, &c1,
					err, sizeof(err)),
		      "%s", err);
		first = strdup(rows.messages.data);
		transcript_rows_reset(&rows);
		CHECK(transcript_handle(j, strlen(j), "s", 1, 0, &rows, &c2,
					err, sizeof(err)),
		      "%s", err);
		CHECK_STR(rows.messages.data, first, "replayed rows");
		free(first);
		free(c1);
		free(c2);
	}
	/* created_at: the receipt time as a UTC literal, ms kept; a time
	 * PostgreSQL cannot store is refused, not left to fail the COPY. */
	{
		static const struct {
			long long ms;
			const char *want; /* NULL: refused */
		} times[] = {
		    {1700000000123LL, "\t2023-11-14 22:13:20.123+00\n"},
		    {0, "\t1970-01-01 00:00:00.000+00\n"},
		    {-1, "\t1969-12-31 23:59:59.999+00\n"},
		    {253402300799999LL, "\t9999-12-31 23:59:59.999+00\n"},
		    {253402300800000LL, NULL},
		    {-62135596800001LL, NULL},
		};
		const char *j = cases[1].json;

		for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
			char *c = NULL;
			bool ok;

			transcript_rows_reset(&rows);
			ok = transcript_handle(j, strlen(j), "s", times[i].ms,
					       0, &rows, &c, err, sizeof(err));
			CHECK(ok == (times[i].want != NULL), "%lld ms: %s",
			      times[i].ms, ok ? "taken" : err);
			if (ok && times[i].want)
				CHECK(strstr(rows.messages.data,
					     times[i].want) != NULL,
				      "%lld ms: rows lack [%s]:\n%s",
				      times[i].ms, times[i].want,
				      rows.messages.data);
			free(c);
		}
	}
	transcript_rows_free(&rows);
	return check_done("test_transcript");
}
