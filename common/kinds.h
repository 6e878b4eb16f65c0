/* Every kind of record sluice carries, one row each: the name a source's
 * `kind` and each record's "kind" header carry, and what sluice-ingest
 * checks a body of that kind for and routes it by. The worker's handler
 * table (worker/handlers/handler.c) takes its names from here, so a name is
 * spelled once: a record of a kind ingest knows always finds its handler. */
#ifndef SLUICE_KINDS_H
#define SLUICE_KINDS_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define KIND_TRANSCRIPT "transcript"	 /* a video-call vendor's callbacks */
#define KIND_CAMPAIGN "campaign"	 /* a scheduler's campaign batches */
#define KIND_LEAD_UPDATED "lead_updated" /* {"lead_id"}: a lead changed */
#define KIND_CHAT "chat" /* WhatsApp Business Cloud API webhooks */

/* What a body is routed by. */
struct kind_route {
	const char *key;	/* the Kafka key; points into the doc or
				   key_text; NULL for a kind with keys() */
	const char *event_type; /* points into the doc, or a constant */
	char key_text[24];	/* an integer key as text */
};

/* One problem with a body: index is an item's, -1 at the top level. */
struct kind_error {
	int index;
	char path[256];
	char message[256];
};

/* What a check is given besides the body. */
struct kind_args {
	const char *path_id; /* the id in the request path, or NULL */
	size_t max_items;    /* most items in one body, 0 = no limit */
};

struct kind {
	const char *name;
	const char *key_name; /* what the answer calls the key */
	/* Checked against schemas/<name>.schema.json before check(). */
	bool schema;
	/* Served at its own path (POST /v1/campaigns/{id}/batches), not at
	 * /v1/webhooks/{source}. */
	bool own_path;
	/* Answers Meta's GET subscription handshake. */
	bool handshake;
	/* A 422 lists every problem (errors[]), not only the first. */
	bool all_errors;
	/* The record's key is also sent in this header, or NULL. */
	const char *key_header;
	/* The kind's own check, after the JSON checks every kind shares:
	 * the route, or false with up to max_errs problems in errs and
	 * their count (which may be more) in *n_errs. */
	bool (*check)(const cJSON *doc, const struct kind_args *a,
		      struct kind_route *out, struct kind_error *errs,
		      size_t max_errs, size_t *n_errs);
	/* Optional: one record per key of a checked body (chat: one per
	 * person), rather than one per body. Returns how many there are (at
	 * most max stored in out). */
	size_t (*keys)(const cJSON *doc, const char **out, size_t max);
};

/* Every kind, NULL-terminated, in the order handlers are listed. */
extern const struct kind *const kinds[];

/* The kind called name, or NULL. */
const struct kind *kind_find(const char *name);

/* "transcript, campaign, ..." in out, for error messages. */
void kind_names(char *out, size_t size);

/* For the kinds' checks: a single problem at the top level; false. */
static inline bool kind_fail(struct kind_error *errs, size_t max_errs,
			     size_t *n_errs, const char *path,
			     const char *message)
{
	*n_errs = 1;
	if (max_errs > 0) {
		errs[0].index = -1;
		snprintf(errs[0].path, sizeof(errs[0].path), "%s", path);
		snprintf(errs[0].message, sizeof(errs[0].message), "%s",
			 message);
	}
	return false;
}

/* doc's member name when it is a non-empty string, else NULL. */
static inline const char *kind_string(const cJSON *doc, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, name);

	return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

#endif
