/* What a payload of each source kind is routed by: key and event type. */
#ifndef SLUICE_EXTRACT_H
#define SLUICE_EXTRACT_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#define LEAD_UPDATED_EVENT_TYPE "lead.updated"

struct extracted {
	const char *key; /* Kafka key: conversation or run or lead id; points
			    into doc or key_text */
	const char *event_type; /* points into doc, or a constant */
	char key_text[24];	/* an integer key as text */
};

/* false with path/msg when the field the record is keyed by is missing. */
bool extract_fields(int kind, const cJSON *doc, struct extracted *out,
		    char *path, size_t pathsz, char *msg, size_t msgsz);

#endif
