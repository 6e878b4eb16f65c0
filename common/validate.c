/* The checks both daemons run on a record's body, so nothing that got a
 * 202 from sluice-ingest is refused by sluice-worker: the JSON itself (no
 * NUL, no duplicate key) and the transcript kind's fields, in bytes. */
#include "validate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* A \u0000 escape inside a string: an odd run of backslashes before the
 * 'u' makes it an escape rather than a literal "\u0000" text. The JSON was
 * parsed already, so only string contents can hold a backslash. */
static bool has_nul_escape(const char *s, size_t len)
{
	for (size_t i = 0; i + 6 <= len; i++) {
		size_t k;

		if (s[i] != '\\' || s[i + 1] != 'u' ||
		    memcmp(s + i + 2, "0000", 4) != 0)
			continue;
		k = 0;
		while (k < i && s[i - 1 - k] == '\\')
			k++;
		if (k % 2 == 0)
			return true;
	}
	return false;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether an object repeats a key: pairwise for the small objects
 * webhooks are made of (no allocation), sorted beyond. */
static const char *repeated_key(const cJSON *node)
{
	enum { SMALL = 24 };
	const cJSON *a, *b;
	int n = 0, i;
	const char **names;
	const char *dup = NULL;

	cJSON_ArrayForEach(a, node) n++;
	if (n <= SMALL) {
		for (a = node->child; a; a = a->next)
			for (b = a->next; b; b = b->next)
				if (strcmp(a->string, b->string) == 0)
					return a->string;
		return NULL;
	}
	names = xcalloc((size_t)n + 1, sizeof(*names));
	i = 0;
	cJSON_ArrayForEach(a, node) names[i++] = a->string;
	qsort(names, (size_t)n, sizeof(*names), cmp_str);
	for (i = 1; i < n && !dup; i++)
		if (strcmp(names[i - 1], names[i]) == 0)
			dup = names[i];
	free(names);
	return dup;
}

/* Depth-first; path gets the JSON path of the first object with a repeated
 * key. */
static bool no_duplicates(const cJSON *node, char *path, size_t pathsz,
			  size_t pathlen, char *msg, size_t msgsz)
{
	const cJSON *child;
	int i = 0;

	if (cJSON_IsObject(node)) {
		const char *dup = repeated_key(node);

		if (dup) {
			snprintf(msg, msgsz, "the key \"%.100s\" appears twice",
				 dup);
			path[pathlen < pathsz ? pathlen : pathsz - 1] = '\0';
			return false;
		}
	}
	cJSON_ArrayForEach(child, node)
	{
		if (cJSON_IsObject(child) || cJSON_IsArray(child)) {
			size_t n = util_path_append(
			    path, pathsz, pathlen,
			    cJSON_IsObject(node) ? child->string : NULL, i);

			if (!no_duplicates(child, path, pathsz, n, msg, msgsz))
				return false;
		}
		i++;
	}
	path[pathlen < pathsz ? pathlen : pathsz - 1] = '\0';
	return true;
}

bool json_check(const char *text, size_t len, const cJSON *doc, char *path,
		size_t pathsz, char *msg, size_t msgsz)
{
	if (has_nul_escape(text, len)) {
		snprintf(path, pathsz, "$");
		snprintf(msg, msgsz, "a string holds \\u0000 (NUL)");
		return false;
	}
	snprintf(path, pathsz, "$");
	return no_duplicates(doc, path, pathsz, 1, msg, msgsz);
}

static bool text_ok(const char *s, size_t max)
{
	size_t n = strlen(s);

	return n > 0 && n <= max && util_utf8_valid(s, n);
}

static const char *str_field(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

#define FAIL(p, ...)                                                           \
	do {                                                                   \
		snprintf(path, pathsz, "%s", (p));                             \
		snprintf(msg, msgsz, __VA_ARGS__);                             \
		return false;                                                  \
	} while (0)

bool transcript_validate(const cJSON *doc, char *path, size_t pathsz, char *msg,
			 size_t msgsz)
{
	const char *cid, *event_type;
	const cJSON *transcript, *entry;
	int i = 0;

	if (!cJSON_IsObject(doc))
		FAIL("$", "must be an object");
	cid = str_field(doc, "conversation_id");
	if (!cid || !text_ok(cid, TRANSCRIPT_CONVERSATION_MAX))
		FAIL("$.conversation_id",
		     "must be a non-empty string of at most %d bytes",
		     TRANSCRIPT_CONVERSATION_MAX);
	event_type = str_field(doc, "event_type");
	if (!event_type || !*event_type)
		event_type = str_field(doc, "type");
	if (!event_type || !text_ok(event_type, TRANSCRIPT_EVENT_TYPE_MAX))
		FAIL("$.event_type",
		     "event_type (or type) must be a non-empty string of at "
		     "most %d bytes",
		     TRANSCRIPT_EVENT_TYPE_MAX);
	if (strcmp(event_type, TRANSCRIPT_EVENT_READY) != 0)
		return true;
	transcript = cJSON_GetObjectItemCaseSensitive(
	    cJSON_GetObjectItemCaseSensitive(doc, "properties"), "transcript");
	if (transcript && !cJSON_IsArray(transcript) &&
	    !cJSON_IsNull(transcript))
		FAIL("$.properties.transcript", "must be an array");
	cJSON_ArrayForEach(entry, transcript)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(entry, "id");
		const char *role = str_field(entry, "role");
		const char *content = str_field(entry, "content");
		char p[96];

		if (!role || !text_ok(role, TRANSCRIPT_ROLE_MAX)) {
			snprintf(p, sizeof(p),
				 "$.properties.transcript[%d].role", i);
			FAIL(p,
			     "must be a non-empty string of at most %d bytes",
			     TRANSCRIPT_ROLE_MAX);
		}
		if (!content ||
		    (content[0] && !text_ok(content, TRANSCRIPT_CONTENT_MAX))) {
			snprintf(p, sizeof(p),
				 "$.properties.transcript[%d].content", i);
			FAIL(p, "must be a string of at most %d bytes",
			     TRANSCRIPT_CONTENT_MAX);
		}
		if (cJSON_IsString(id) && id->valuestring[0] &&
		    !text_ok(id->valuestring, TRANSCRIPT_ID_MAX)) {
			snprintf(p, sizeof(p), "$.properties.transcript[%d].id",
				 i);
			FAIL(p, "must be at most %d bytes", TRANSCRIPT_ID_MAX);
		}
		if (cJSON_IsNumber(id) &&
		    (!isfinite(id->valuedouble) ||
		     floor(id->valuedouble) != id->valuedouble ||
		     fabs(id->valuedouble) >= TRANSCRIPT_INT_ID_LIMIT)) {
			snprintf(p, sizeof(p), "$.properties.transcript[%d].id",
				 i);
			FAIL(p, "an integer id must be below 10^15");
		}
		if (id && !cJSON_IsString(id) && !cJSON_IsNumber(id) &&
		    !cJSON_IsNull(id)) {
			snprintf(p, sizeof(p), "$.properties.transcript[%d].id",
				 i);
			FAIL(p, "must be a string or an integer");
		}
		i++;
	}
	return true;
}

cJSON *json_parse_whole(const char *text, size_t len, long *bad_at)
{
	const char *end = NULL;
	cJSON *doc = cJSON_ParseWithLengthOpts(text, len, &end, 0);

	if (doc) {
		while (end < text + len && (*end == ' ' || *end == '\n' ||
					    *end == '\r' || *end == '\t'))
			end++;
		if (end == text + len)
			return doc;
		cJSON_Delete(doc);
		if (bad_at)
			*bad_at = (long)(end - text);
		return NULL;
	}
	/* cJSON's error position is global: only asked for when wanted (the
	 * ingest's single thread). */
	if (bad_at)
		*bad_at = cJSON_GetErrorPtr()
			      ? (long)(cJSON_GetErrorPtr() - text)
			      : 0;
	return NULL;
}

/* What the worker will require, byte for byte; keyed by the conversation,
 * with the event type spelled either way. */
static bool transcript_check(const cJSON *doc, const struct kind_args *a,
			     struct kind_route *out, struct kind_error *errs,
			     size_t max_errs, size_t *n_errs)
{
	struct kind_error e;

	(void)a;
	if (!cJSON_IsObject(doc))
		return kind_fail(errs, max_errs, n_errs, "$",
				 "must be an object");
	if (!transcript_validate(doc, e.path, sizeof(e.path), e.message,
				 sizeof(e.message)))
		return kind_fail(errs, max_errs, n_errs, e.path, e.message);
	out->key = kind_string(doc, "conversation_id");
	if (!out->key)
		return kind_fail(errs, max_errs, n_errs, "$.conversation_id",
				 "must be a non-empty string");
	out->event_type = kind_string(doc, "event_type");
	if (!out->event_type)
		out->event_type = kind_string(doc, "type");
	if (!out->event_type)
		return kind_fail(errs, max_errs, n_errs, "$.event_type",
				 "event_type (or type) must be a non-empty "
				 "string");
	return true;
}

const struct kind transcript_kind = {
    .name = KIND_TRANSCRIPT,
    .key_name = "conversationId",
    .schema = true,
    .check = transcript_check,
};
