/* Transcript source events → conversation and message rows (COPY text). */
#include "transcript.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void transcript_rows_init(struct transcript_rows *r)
{
	buf_init(&r->conversations);
	buf_init(&r->messages);
	r->n_conversations = r->n_messages = 0;
}

void transcript_rows_reset(struct transcript_rows *r)
{
	buf_reset(&r->conversations);
	buf_reset(&r->messages);
	r->n_conversations = r->n_messages = 0;
}

void transcript_rows_free(struct transcript_rows *r)
{
	buf_free(&r->conversations);
	buf_free(&r->messages);
}

void copy_escape(struct buf *b, const char *s)
{
	const char *run = s;

	for (; *s; s++) {
		const char *esc = NULL;

		switch (*s) {
		case '\\': esc = "\\\\"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		default: continue;
		}
		buf_append(b, run, (size_t)(s - run));
		buf_append(b, esc, 2);
		run = s + 1;
	}
	buf_append(b, run, (size_t)(s - run));
}

void transcript_entry_id(const char *conversation_id, int position,
			 char out[TRANSCRIPT_ID_LEN])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char pos[16];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	snprintf(pos, sizeof(pos), "%d", position);
	/* The unit separator keeps ("a1", 2) and ("a", 12) apart. */
	if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(ctx, conversation_id, strlen(conversation_id)) !=
		1 ||
	    EVP_DigestUpdate(ctx, "\x1f", 1) != 1 ||
	    EVP_DigestUpdate(ctx, pos, strlen(pos)) != 1 ||
	    EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen < 16)
		abort(); /* SHA-256 missing from libcrypto: nothing to do */
	EVP_MD_CTX_free(ctx);
	memcpy(out, "gen-", 4);
	for (int i = 0; i < 16; i++) {
		out[4 + 2 * i] = hex[md[i] >> 4];
		out[5 + 2 * i] = hex[md[i] & 15];
	}
	out[36] = '\0';
}

const char *transcript_status_for(const char *event_type)
{
	if (strcmp(event_type, "system.replica_joined") == 0)
		return "active";
	if (strcmp(event_type, "system.shutdown") == 0)
		return "ended";
	return NULL;
}

static const char *str_field(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool text_ok(const char *s, size_t max)
{
	size_t n = strlen(s);

	return n <= max && util_utf8_valid(s, n);
}

bool transcript_handle(const char *value, size_t len, const char *source,
		       int64_t received_ms, int64_t seq,
		       struct transcript_rows *rows, char **conversation_id,
		       char *errstr, size_t errstr_size)
{
	size_t conv_mark = rows->conversations.len;
	size_t msg_mark = rows->messages.len;
	size_t n_msgs = 0;
	const char *cid, *event_type, *status;
	const cJSON *props, *transcript, *entry;
	bool is_ready;
	cJSON *doc;
	int position = 0;

	*conversation_id = NULL;
	if (!value || len == 0) {
		snprintf(errstr, errstr_size, "empty record");
		return false;
	}
	doc = cJSON_ParseWithLength(value, len);
	if (!doc || !cJSON_IsObject(doc)) {
		snprintf(errstr, errstr_size, "value is not a JSON object");
		goto fail;
	}
	cid = str_field(doc, "conversation_id");
	if (!cid || !*cid || !text_ok(cid, 256)) {
		snprintf(errstr, errstr_size,
			 "$.conversation_id missing, empty or not valid UTF-8");
		goto fail;
	}
	event_type = str_field(doc, "event_type");
	if (!event_type || !*event_type)
		event_type = str_field(doc, "type");
	if (!event_type || !*event_type || !text_ok(event_type, 128)) {
		snprintf(errstr, errstr_size, "$.event_type missing");
		goto fail;
	}
	is_ready = strcmp(event_type, TRANSCRIPT_EVENT_READY) == 0;

	if (is_ready) {
		props = cJSON_GetObjectItemCaseSensitive(doc, "properties");
		transcript =
		    cJSON_GetObjectItemCaseSensitive(props, "transcript");
		if (transcript && !cJSON_IsArray(transcript)) {
			snprintf(errstr, errstr_size,
				 "$.properties.transcript is not an array");
			goto fail;
		}
		cJSON_ArrayForEach(entry, transcript)
		{
			const cJSON *idv =
			    cJSON_GetObjectItemCaseSensitive(entry, "id");
			const char *role = str_field(entry, "role");
			const char *content = str_field(entry, "content");
			char idbuf[64];
			const char *ext_id;

			if (!role || !*role || !content || !text_ok(role, 64) ||
			    !text_ok(content, 1 << 24)) {
				snprintf(errstr, errstr_size,
					 "$.properties.transcript[%d] needs "
					 "string role and content",
					 position);
				goto fail;
			}
			if (cJSON_IsString(idv) && idv->valuestring[0] &&
			    text_ok(idv->valuestring, 256)) {
				ext_id = idv->valuestring;
			} else if (cJSON_IsNumber(idv) &&
				   isfinite(idv->valuedouble) &&
				   fabs(idv->valuedouble) < 1e15) {
				snprintf(idbuf, sizeof(idbuf), "%.0f",
					 idv->valuedouble);
				ext_id = idbuf;
			} else if (!idv || cJSON_IsNull(idv) ||
				   (cJSON_IsString(idv) &&
				    !idv->valuestring[0])) {
				transcript_entry_id(cid, position, idbuf);
				ext_id = idbuf;
			} else {
				snprintf(errstr, errstr_size,
					 "$.properties.transcript[%d].id is "
					 "not a string or integer",
					 position);
				goto fail;
			}
			copy_escape(&rows->messages, cid);
			buf_puts(&rows->messages, "\t");
			copy_escape(&rows->messages, ext_id);
			buf_printf(&rows->messages, "\t%d\t", position);
			copy_escape(&rows->messages, role);
			buf_puts(&rows->messages, "\t");
			copy_escape(&rows->messages, content);
			buf_printf(&rows->messages, "\t%lld\n",
				   (long long)received_ms);
			n_msgs++;
			position++;
		}
	}

	status = transcript_status_for(event_type);
	buf_printf(&rows->conversations, "%lld\t", (long long)seq);
	copy_escape(&rows->conversations, cid);
	buf_puts(&rows->conversations, "\t");
	copy_escape(&rows->conversations,
		    source && *source ? source : "unknown");
	buf_puts(&rows->conversations, "\t");
	copy_escape(&rows->conversations, event_type);
	buf_puts(&rows->conversations, "\t");
	if (status)
		copy_escape(&rows->conversations, status);
	else
		buf_puts(&rows->conversations, "\\N");
	buf_printf(&rows->conversations, "\t%s\t%lld\n", is_ready ? "t" : "f",
		   (long long)received_ms);

	rows->n_conversations++;
	rows->n_messages += n_msgs;
	*conversation_id = strdup(cid);
	cJSON_Delete(doc);
	return true;
fail:
	rows->conversations.len = conv_mark;
	rows->messages.len = msg_mark;
	if (rows->conversations.data)
		rows->conversations.data[conv_mark] = '\0';
	if (rows->messages.data)
		rows->messages.data[msg_mark] = '\0';
	cJSON_Delete(doc);
	return false;
}
