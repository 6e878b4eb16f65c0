/* Transcript records → COPY rows: ids, binary tuples, duplicates,
 * rejects. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

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
    /* Refused by the entry loop (the schema sets no length on role), so
     * the first entry's row was built already and must be taken back. */
    {"second entry's role over 64 bytes, after a good one",
     "{\"conversation_id\":\"c\",\"event_type\":\"application.transcription_"
     "ready\","
     "\"properties\":{\"transcript\":[{\"role\":\"user\",\"content\":\"x\"},"
     "{\"role\":\"r123456789r123456789r123456789r123456789r123456789r123456789"
     "r1234\",\"content\":\"y\"}]}}",
     false, 0, NULL, NULL},
    {"object id",
     "{\"conversation_id\":\"c\",\"event_type\":\"application.transcription_"
     "ready\","
     "\"properties\":{\"transcript\":[{\"id\":{},\"role\":\"user\",\"content\":"
     "\"x\"}]}}",
     false, 0, NULL, NULL},
};

static uint64_t be(const unsigned char *p, int bytes)
{
	uint64_t v = 0;

	for (int i = 0; i < bytes; i++)
		v = v << 8 | p[i];
	return v;
}

/* The binary message tuples in COPY's text form, so that the cases read
 * as rows: six fields each (text, text, int4, text, text, timestamptz),
 * every length within the buffer. NULL if a tuple is malformed. */
static char *as_text(const struct buf *m, size_t from)
{
	const unsigned char *p = (const unsigned char *)m->data + from;
	const unsigned char *end = (const unsigned char *)m->data + m->len;
	static const int lens[6] = {-1, -1, 4, -1, -1, 8};
	struct buf out;

	buf_init(&out);
	buf_puts(&out, "");
	while (p < end) {
		if (end - p < 2 || be(p, 2) != 6)
			goto bad;
		p += 2;
		for (int f = 0; f < 6; f++) {
			uint64_t n;
			char *s;

			if (end - p < 4)
				goto bad;
			n = be(p, 4);
			p += 4;
			if ((uint64_t)(end - p) < n ||
			    (lens[f] >= 0 && n != (uint64_t)lens[f]))
				goto bad;
			if (f)
				buf_puts(&out, "\t");
			if (f == 2) {
				buf_put_int(&out, (int32_t)be(p, 4));
			} else if (f == 5) {
				/* microseconds since 2000-01-01 UTC */
				int64_t us = (int64_t)be(p, 8);
				int64_t ms = us / 1000 + 946684800000LL;
				int64_t secs =
				    ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
				time_t tt = (time_t)secs;
				struct tm tm;

				gmtime_r(&tt, &tm);
				buf_printf(
				    &out,
				    "%04d-%02d-%02d %02d:%02d:%02d.%03d+00",
				    tm.tm_year + 1900, tm.tm_mon + 1,
				    tm.tm_mday, tm.tm_hour, tm.tm_min,
				    tm.tm_sec, (int)(ms - secs * 1000));
			} else {
				s = strndup((const char *)p, (size_t)n);
				buf_copy_escape(&out, s);
				free(s);
			}
			p += n;
		}
		buf_puts(&out, "\n");
	}
	return out.data;
bad:
	buf_free(&out);
	return NULL;
}

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
		if (cases[i].rows_have) {
			char *text = as_text(&rows.messages, before);

			CHECK(text && strstr(text, cases[i].rows_have) != NULL,
			      "%s: rows lack [%s]:\n%s", cases[i].name,
			      cases[i].rows_have, text ? text : "(malformed)");
			free(text);
		}
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
		size_t first_len;

		transcript_rows_reset(&rows);
		CHECK(transcript_handle(j, strlen(j), "s", 1, 0, &rows, &c1,
					err, sizeof(err)),
		      "%s", err);
		first_len = rows.messages.len;
		first = malloc(first_len + 1);
		memcpy(first, rows.messages.data, first_len);
		transcript_rows_reset(&rows);
		CHECK(transcript_handle(j, strlen(j), "s", 1, 0, &rows, &c2,
					err, sizeof(err)),
		      "%s", err);
		CHECK(rows.messages.len == first_len &&
			  memcmp(rows.messages.data, first, first_len) == 0,
		      "replayed rows differ");
		free(first);
		free(c1);
		free(c2);
	}
	/* created_at: the receipt time, ms kept; a time outside the years
	 * 1-9999 is refused, not written. */
	{
		static const struct {
			long long ms;
			const char *want; /* NULL: refused */
		} times[] = {
		    {1700000000123LL, "\t2023-11-14 22:13:20.123+00\n"},
		    {0, "\t1970-01-01 00:00:00.000+00\n"},
		    {-1, "\t1969-12-31 23:59:59.999+00\n"},
		    {253402300799999LL, "\t9999-12-31 23:59:59.999+00\n"},
		    {-62135596800000LL, "\t0001-01-01 00:00:00.000+00\n"},
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
			if (ok && times[i].want) {
				char *text = as_text(&rows.messages, 0);

				CHECK(
				    text && strstr(text, times[i].want) != NULL,
				    "%lld ms: rows lack [%s]:\n%s", times[i].ms,
				    times[i].want, text ? text : "(malformed)");
				free(text);
			}
			free(c);
		}
	}
	transcript_rows_free(&rows);
	return check_done("test_transcript");
}
