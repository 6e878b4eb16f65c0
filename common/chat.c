/* WhatsApp Business Cloud API webhooks: the one validation both daemons
 * run, and the walk over one person's messages and statuses. */
#include "chat.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafka.h"
#include "util.h"

static const char *str_of(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool text_ok(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;

	return n > 0 && n <= max && util_utf8_valid(s, n);
}

/* Meta sends seconds as a string of digits; an integer is taken too. */
static bool timestamp_of(const cJSON *o, int64_t *ms)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "timestamp");

	*ms = 0;
	if (!v)
		return true;
	if (cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
	    v->valuedouble >= 0 && v->valuedouble < 1e11) {
		*ms = (int64_t)v->valuedouble * 1000;
		return true;
	}
	if (cJSON_IsString(v) && v->valuestring[0] &&
	    strlen(v->valuestring) <= 11) {
		for (const char *p = v->valuestring; *p; p++)
			if (!isdigit((unsigned char)*p))
				return false;
		*ms = atoll(v->valuestring) * 1000;
		return true;
	}
	return false;
}

static const char *business_of(const cJSON *value)
{
	const cJSON *md = cJSON_GetObjectItemCaseSensitive(value, "metadata");
	const char *b = str_of(md, "display_phone_number");

	if (!b || !*b)
		b = str_of(md, "phone_number_id");
	return b;
}

#define FAIL(...)                                                              \
	do {                                                                   \
		snprintf(msg, msgsz, __VA_ARGS__);                             \
		return false;                                                  \
	} while (0)

/* A person's id goes into a Kafka key and a NOTIFY payload
 * ("business:sender"): printable ASCII, no space, no colon. */
static bool id_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > CHAT_PHONE_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e ||
		    s[i] == ':')
			return false;
	return true;
}

/* What Meta's statuses object documents for "status". Anything else is
 * refused rather than stored: a status sluice does not know is never
 * recorded as one it does. */
static const char *const known_statuses[] = {
    "sent", "delivered", "read", "failed", "deleted", "warning", NULL};

static bool status_known(const char *s)
{
	for (size_t i = 0; known_statuses[i]; i++)
		if (strcmp(s, known_statuses[i]) == 0)
			return true;
	return false;
}

static bool check_items(const cJSON *value, const char *name, bool status,
			const char *prefix, char *path, size_t pathsz,
			char *msg, size_t msgsz)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(value, name);
	const cJSON *it;
	int i = 0;

	if (!arr)
		return true;
	snprintf(path, pathsz, "%s.%s", prefix, name);
	if (!cJSON_IsArray(arr))
		FAIL("must be an array");
	cJSON_ArrayForEach(it, arr)
	{
		const char *who = str_of(it, status ? "recipient_id" : "from");
		int64_t ms;

		snprintf(path, pathsz, "%s.%s[%d]", prefix, name, i);
		if (!cJSON_IsObject(it))
			FAIL("must be an object");
		snprintf(path, pathsz, "%s.%s[%d].%s", prefix, name, i,
			 status ? "recipient_id" : "from");
		if (!id_ok(who))
			FAIL("must be 1 to %d printable characters without "
			     "spaces or colons",
			     CHAT_PHONE_MAX);
		snprintf(path, pathsz, "%s.%s[%d].id", prefix, name, i);
		if (!text_ok(str_of(it, "id"), CHAT_ID_MAX))
			FAIL("must be a non-empty string of at most %d bytes",
			     CHAT_ID_MAX);
		snprintf(path, pathsz, "%s.%s[%d].%s", prefix, name, i,
			 status ? "status" : "type");
		if (!text_ok(str_of(it, status ? "status" : "type"), 64))
			FAIL("must be a non-empty string of at most 64 bytes");
		if (status && !status_known(str_of(it, "status")))
			FAIL("must be one of sent, delivered, read, failed, "
			     "deleted, warning");
		snprintf(path, pathsz, "%s.%s[%d].timestamp", prefix, name, i);
		if (!timestamp_of(it, &ms))
			FAIL("must be seconds since the epoch");
		if (!status) {
			const cJSON *text =
			    cJSON_GetObjectItemCaseSensitive(it, "text");
			const cJSON *body =
			    cJSON_GetObjectItemCaseSensitive(text, "body");

			snprintf(path, pathsz, "%s.%s[%d].text.body", prefix,
				 name, i);
			if (body && (!cJSON_IsString(body) ||
				     strlen(body->valuestring) > CHAT_TEXT_MAX))
				FAIL("must be a string of at most %d bytes",
				     CHAT_TEXT_MAX);
		}
		i++;
	}
	return true;
}

bool chat_validate(const cJSON *doc, char *path, size_t pathsz, char *msg,
		   size_t msgsz)
{
	const cJSON *entries, *entry;
	int e = 0;

	snprintf(path, pathsz, "$");
	if (!cJSON_IsObject(doc))
		FAIL("must be an object");
	/* Another product's webhook (a Page, Instagram) has other shapes:
	 * acknowledging it would lose it without a trace. */
	snprintf(path, pathsz, "$.object");
	if (!str_of(doc, "object") ||
	    strcmp(str_of(doc, "object"), CHAT_OBJECT) != 0)
		FAIL("must be \"" CHAT_OBJECT "\"");
	entries = cJSON_GetObjectItemCaseSensitive(doc, "entry");
	snprintf(path, pathsz, "$.entry");
	if (!cJSON_IsArray(entries))
		FAIL("must be an array");
	cJSON_ArrayForEach(entry, entries)
	{
		const cJSON *changes =
		    cJSON_GetObjectItemCaseSensitive(entry, "changes");
		const cJSON *ch;
		int k = 0;

		snprintf(path, pathsz, "$.entry[%d].changes", e);
		if (!cJSON_IsObject(entry) || !cJSON_IsArray(changes))
			FAIL("must be an array");
		cJSON_ArrayForEach(ch, changes)
		{
			const cJSON *value =
			    cJSON_GetObjectItemCaseSensitive(ch, "value");
			char prefix[64];
			bool has;

			snprintf(prefix, sizeof(prefix),
				 "$.entry[%d].changes[%d].value", e, k);
			has =
			    cJSON_GetObjectItemCaseSensitive(value,
							     "messages") ||
			    cJSON_GetObjectItemCaseSensitive(value, "statuses");
			if (has) {
				const char *b = business_of(value);

				snprintf(path, pathsz,
					 "%s.metadata.display_phone_number",
					 prefix);
				if (!text_ok(b, CHAT_PHONE_MAX))
					FAIL("(or phone_number_id) must be a "
					     "non-empty string");
			}
			if (!check_items(value, "messages", false, prefix, path,
					 pathsz, msg, msgsz) ||
			    !check_items(value, "statuses", true, prefix, path,
					 pathsz, msg, msgsz))
				return false;
			k++;
		}
		e++;
	}
	snprintf(path, pathsz, "$");
	return true;
}

void chat_each(const cJSON *doc, const char *sender,
	       void (*fn)(void *arg, const struct chat_item *it), void *arg)
{
	const cJSON *entry, *ch, *it;

	cJSON_ArrayForEach(entry,
			   cJSON_GetObjectItemCaseSensitive(doc, "entry"))
	{
		cJSON_ArrayForEach(
		    ch, cJSON_GetObjectItemCaseSensitive(entry, "changes"))
		{
			const cJSON *value =
			    cJSON_GetObjectItemCaseSensitive(ch, "value");
			const char *b = business_of(value);

			for (int st = 0; st < 2; st++) {
				cJSON_ArrayForEach(
				    it,
				    cJSON_GetObjectItemCaseSensitive(
					value, st ? "statuses" : "messages"))
				{
					struct chat_item item = {
					    it, b,
					    str_of(it, st ? "recipient_id"
							  : "from"),
					    st != 0, 0};

					if (sender &&
					    strcmp(item.sender, sender) != 0)
						continue;
					if (!timestamp_of(it, &item.at_ms))
						item.at_ms = 0;
					fn(arg, &item);
				}
			}
		}
	}
}

struct sender_list {
	const char **out;
	size_t max, n;
};

static void add_sender(void *arg, const struct chat_item *it)
{
	struct sender_list *l = arg;
	size_t stored = l->n < l->max ? l->n : l->max;

	for (size_t i = 0; i < stored; i++)
		if (strcmp(l->out[i], it->sender) == 0)
			return;
	if (l->n < l->max)
		l->out[l->n] = it->sender;
	l->n++;
}

size_t chat_senders(const cJSON *doc, const char **out, size_t max)
{
	struct sender_list l = {out, max, 0};

	chat_each(doc, NULL, add_sender, &l);
	return l.n;
}

bool chat_phone_digits(const char *phone, char *out, size_t outsz)
{
	size_t n = 0;

	for (const char *p = phone; *p && n + 1 < outsz; p++)
		if (isdigit((unsigned char)*p))
			out[n++] = *p;
	out[n] = '\0';
	return n > 0;
}

static bool chat_check(const cJSON *doc, const struct kind_args *a,
		       struct kind_route *out, struct kind_error *errs,
		       size_t max_errs, size_t *n_errs)
{
	struct kind_error e;

	(void)a;
	if (!chat_validate(doc, e.path, sizeof(e.path), e.message,
			   sizeof(e.message)))
		return kind_fail(errs, max_errs, n_errs, e.path, e.message);
	out->key = NULL;
	out->event_type = CHAT_EVENT_TYPE;
	return true;
}

const struct kind chat_kind = {
    .name = KIND_CHAT,
    .key_name = "sender",
    .handshake = true,
    .key_header = HDR_CHAT_SENDER,
    .check = chat_check,
    .keys = chat_senders,
};
