/* WhatsApp Business Cloud API webhooks: the one validation both daemons
 * run, and the walk over one person's messages and statuses. */
#ifndef SLUICE_CHAT_H
#define SLUICE_CHAT_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kinds.h"

#define CHAT_EVENT_TYPE "whatsapp.messages"
#define CHAT_OBJECT "whatsapp_business_account" /* the body's "object" */
#define CHAT_ID_MAX 256				/* bytes: message ids */
#define CHAT_PHONE_MAX 64   /* bytes: wa_id, display numbers */
#define CHAT_TEXT_MAX 65536 /* bytes: a text body */

/* One message or status of a webhook, with the business number it was
 * sent to (display_phone_number, else phone_number_id). */
struct chat_item {
	const cJSON *json;
	const char *business;
	const char
	    *sender; /* "from" of a message, "recipient_id" of a status */
	bool is_status;
	int64_t at_ms; /* its "timestamp" (seconds) in ms, 0 if absent */
};

/* false with the JSON path and what is wrong. Refused too: an "object"
 * other than CHAT_OBJECT, and a status outside Meta's documented values
 * (sent, delivered, read, failed, deleted, warning). */
bool chat_validate(const cJSON *doc, char *path, size_t pathsz, char *msg,
		   size_t msgsz) __attribute__((warn_unused_result));

/* The distinct people of a valid webhook, in order of first appearance;
 * returns how many (at most max are stored). */
size_t chat_senders(const cJSON *doc, const char **out, size_t max);

/* Calls fn for each item of sender (every item when sender is NULL), in
 * the order the webhook lists them. */
void chat_each(const cJSON *doc, const char *sender,
	       void (*fn)(void *arg, const struct chat_item *it), void *arg);

/* "+1 (555) 010-2030" → "15550102030" in out; false if no digit. */
bool chat_phone_digits(const char *phone, char *out, size_t outsz);

/* Its row in the kinds table: one record per person, keyed by wa_id. */
extern const struct kind chat_kind;

#endif
