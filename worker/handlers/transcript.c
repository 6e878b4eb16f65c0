/* Transcript source events → conversation rows (COPY text) and message
 * rows (COPY binary). */
#include "transcript.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"
#include "../../common/validate.h"
#include "../pgsink.h"

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

/* SHA-256, fetched from the provider once: a fetch per digest takes the
 * provider's locks each time, and there are twenty digests a record. */
static const EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
	sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void transcript_entry_id(const char *conversation_id, int position,
			 char out[TRANSCRIPT_ID_LEN])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	size_t n = strlen(conversation_id);
	char stack[512],
	    *in = n + 16 <= sizeof(stack) ? stack : xmalloc(n + 16);
	int len;

	pthread_once(&sha256_once, sha256_fetch);
	/* The unit separator keeps ("a1", 2) and ("a", 12) apart. */
	memcpy(in, conversation_id, n);
	len = (int)n + snprintf(in + n, 16, "\x1f%d", position);
	if (!sha256 ||
	    EVP_Digest(in, (size_t)len, md, &mdlen, sha256, NULL) != 1 ||
	    mdlen < 16)
		abort(); /* SHA-256 missing from libcrypto: nothing to do */
	if (in != stack)
		free(in);
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

/* The message rows go to COPY in its binary format: PostgreSQL takes a
 * text field as it comes (no scan for tabs, newlines and backslashes on
 * either side) and a timestamptz as its eight bytes instead of parsing a
 * literal, which made the server's side of the COPY 8-17 % cheaper per row
 * on the bench's rows. Each row is a tuple; pgsink adds the header and the
 * trailer around every COPY. All integers are big-endian. */
static void put_be(struct buf *b, uint64_t v, int bytes)
{
	unsigned char out[8];

	for (int i = bytes - 1; i >= 0; i--, v >>= 8)
		out[i] = (unsigned char)(v & 0xff);
	buf_append(b, out, (size_t)bytes);
}

static void put_text(struct buf *b, const char *s)
{
	size_t n = strlen(s);

	put_be(b, n, 4);
	buf_append(b, s, n);
}

/* PostgreSQL's epoch, 2000-01-01 00:00:00 UTC, in Unix milliseconds. */
#define PG_EPOCH_MS 946684800000LL

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
	uint64_t created = 0; /* microseconds since PG_EPOCH_MS */

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
	/* The same checks ingest ran before its 202. */
	{
		char path[128], msg[160];

		if (!json_check(value, len, doc, path, sizeof(path), msg,
				sizeof(msg)) ||
		    !transcript_validate(doc, path, sizeof(path), msg,
					 sizeof(msg))) {
			snprintf(errstr, errstr_size, "%s %s", path, msg);
			goto fail;
		}
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
	/* A receipt time outside the years 1-9999 is a producer's mistake
	 * (sluice-ingest stamps its own clock; another producer might not):
	 * refused here, not written. */
	if (received_ms < -62135596800000LL ||
	    received_ms > 253402300799999LL) {
		snprintf(errstr, errstr_size,
			 "received time %lld ms is outside the years 1-9999",
			 (long long)received_ms);
		goto fail;
	}

	if (is_ready) {
		created = (uint64_t)((received_ms - PG_EPOCH_MS) * 1000);
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
			put_be(&rows->messages, 6, 2); /* fields */
			put_text(&rows->messages, cid);
			put_text(&rows->messages, ext_id);
			put_be(&rows->messages, 4, 4);
			put_be(&rows->messages, (uint32_t)position, 4);
			put_text(&rows->messages, role);
			put_text(&rows->messages, content);
			put_be(&rows->messages, 8, 4);
			put_be(&rows->messages, created, 8);
			n_msgs++;
			position++;
		}
	}

	status = transcript_status_for(event_type);
	buf_printf(&rows->conversations, "%lld\t", (long long)seq);
	buf_copy_escape(&rows->conversations, cid);
	buf_puts(&rows->conversations, "\t");
	buf_copy_escape(&rows->conversations,
			source && *source ? source : "unknown");
	buf_puts(&rows->conversations, "\t");
	buf_copy_escape(&rows->conversations, event_type);
	buf_puts(&rows->conversations, "\t");
	if (status)
		buf_copy_escape(&rows->conversations, status);
	else
		buf_puts(&rows->conversations, "\\N");
	buf_printf(&rows->conversations, "\t%s\t%lld\n", is_ready ? "t" : "f",
		   (long long)received_ms);

	rows->n_conversations++;
	rows->n_messages += n_msgs;
	*conversation_id = xstrdup(cid);
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

/* ------------------------------------------------------------ handler */

static const char SQL_STAGING[] =
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_conv ("
    " seq bigint, id text, source text, event_type text, status text,"
    " transcript boolean, received_ms bigint) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS sluice_stage_msg ("
    " conversation_id text, external_event_id text, position integer,"
    " role text, content text, created_at timestamptz)"
    " ON COMMIT DELETE ROWS;";

/* One row per conversation of the batch: the last event wins, a status is
 * taken from the last event that sets one, the transcript flag sticks.
 * Conversations already stored are UPDATEd by a join and only the others
 * INSERTed: the ON CONFLICT arm must tell "no status in the batch" from
 * the default 'active' it inserts, which takes a lookup in s per row, a
 * scan of s each time (s has no index), so a batch of N stored
 * conversations cost N^2 (2,000 of them: 200 ms against 14 ms for new
 * ones). Now that arm only meets a row another transaction inserted
 * after this statement's snapshot (a replay beside the live worker). */
#define UPSERT_CONV_FROM_S                                                        \
	" u AS ("                                                                 \
	"  UPDATE conversations AS c SET"                                         \
	"   status = COALESCE(s.status, c.status),"                               \
	"   last_event_type = s.event_type,"                                      \
	"   transcript_received = c.transcript_received OR s.transcript,"         \
	"   transcript_received_at = COALESCE(c.transcript_received_at,"          \
	"                                     s.transcript_at),"                  \
	"   updated_at = now()"                                                   \
	"  FROM s WHERE c.id = s.id RETURNING c.id)"                              \
	" INSERT INTO conversations AS c (id, source, status, last_event_type,"   \
	"   transcript_received, transcript_received_at, created_at, updated_at)" \
	" SELECT id, source, COALESCE(status, 'active'), event_type, transcript," \
	"   transcript_at, first_at, now() FROM s"                                \
	" WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.id = s.id)"                   \
	" ON CONFLICT (id) DO UPDATE SET"                                         \
	"   status = COALESCE((SELECT s.status FROM s WHERE s.id = EXCLUDED.id)," \
	"                     c.status),"                                         \
	"   last_event_type = EXCLUDED.last_event_type,"                          \
	"   transcript_received = c.transcript_received"                          \
	"                         OR EXCLUDED.transcript_received,"               \
	"   transcript_received_at = COALESCE(c.transcript_received_at,"          \
	"                                     EXCLUDED.transcript_received_at),"  \
	"   updated_at = now()"

static const char SQL_UPSERT_CONV[] =
    "WITH s AS ("
    "  SELECT id,"
    "   (array_agg(source ORDER BY seq DESC))[1] AS source,"
    "   (array_agg(status ORDER BY seq DESC)"
    "      FILTER (WHERE status IS NOT NULL))[1] AS status,"
    "   (array_agg(event_type ORDER BY seq DESC))[1] AS event_type,"
    "   bool_or(transcript) AS transcript,"
    "   to_timestamp(min(received_ms) FILTER (WHERE transcript) / 1000.0)"
    "     AS transcript_at,"
    "   to_timestamp(min(received_ms) / 1000.0) AS first_at"
    "  FROM sluice_stage_conv GROUP BY id)," UPSERT_CONV_FROM_S;

/* The same when each conversation came once in the batch (the usual
 * case: a call's events are minutes apart): its one event is the row,
 * with no sort and no aggregate. 2,000 new conversations: 12-13 ms
 * against 17-19 ms grouped. */
static const char SQL_UPSERT_CONV_ONCE[] =
    "WITH s AS ("
    "  SELECT id, source, status, event_type, transcript,"
    "   CASE WHEN transcript THEN to_timestamp(received_ms / 1000.0) END"
    "     AS transcript_at,"
    "   to_timestamp(received_ms / 1000.0) AS first_at"
    "  FROM sluice_stage_conv)," UPSERT_CONV_FROM_S;

static const char SQL_INSERT_MSG[] =
    "INSERT INTO messages (conversation_id, external_event_id, position,"
    "   role, content, created_at)"
    " SELECT conversation_id, external_event_id, position, role, content,"
    "   created_at FROM sluice_stage_msg"
    " ON CONFLICT (conversation_id, external_event_id) DO NOTHING";

/* The messages of a batch in which no conversation brings messages twice
 * are COPYed straight into the table: no staging, no ON CONFLICT, which is
 * most of the statement's cost (it checks each row against the unique
 * index before inserting it, then inserts it into the index again). A row
 * already there (a transcript sent again, a replay) makes that COPY fail
 * on the unique key; its savepoint is rolled back and the batch takes the
 * staged INSERT ... ON CONFLICT DO NOTHING instead, as do the next
 * FAST_PAUSE batches, so a stream of repeats costs one failed COPY in
 * FAST_PAUSE + 1 batches. */
#define FAST_PAUSE 8

/* The fast path, chunk by chunk: the batch has no repeated key, so its
 * rows are sent as they are built, each chunk a COPY of its own. The
 * first is small (128 KiB, about 50 transcripts of twenty entries): the
 * server has nothing to do until it arrives. Each next one may be four
 * times the last, up to 8 MiB: the server writes rows about four times
 * slower than they are decoded, so a chunk four times larger is still
 * built before the server is done with the previous one, and every
 * chunk's end is a stop of the server while this thread collects its
 * answer and opens the next COPY (on a busy box, a wait for this thread
 * to be scheduled). A batch of 2,000 transcripts (10 MiB) goes in four
 * chunks instead of about ten. */
#define STREAM_FIRST (128 * 1024)
#define STREAM_GROWTH 4
#define STREAM_MAX (8 * 1024 * 1024)

struct strlist {
	char **v;
	size_t n, cap;
};

struct transcript_state {
	struct transcript_rows rows;
	struct cache_templates templates; /* invalidate_* */
	struct strlist conv_ids;
	struct strlist with_msgs; /* conv_ids' strings that brought messages */
	int fast_pause;		  /* batches left before the fast path again */
	bool streaming;		  /* the fast path's chunks have begun */
	size_t sent;		  /* bytes of rows.messages sent in them */
	size_t chunk;		  /* bytes that make the next chunk */
	long long inserted;
	size_t records;
	unsigned long long saved, skipped; /* totals */
};

static void *transcript_create(const struct handler_env *env)
{
	struct transcript_state *t = xcalloc(1, sizeof(*t));

	t->chunk = STREAM_FIRST;
	transcript_rows_init(&t->rows);
	cache_templates_load(&t->templates, env->cfg->invalidate_keys,
			     env->cfg->invalidate_generation,
			     env->cfg->invalidate_index);
	return t;
}

static void transcript_reset(void *st)
{
	struct transcript_state *t = st;

	transcript_rows_reset(&t->rows);
	for (size_t i = 0; i < t->conv_ids.n; i++)
		free(t->conv_ids.v[i]);
	t->conv_ids.n = 0;
	t->with_msgs.n = 0;
	t->streaming = false;
	t->sent = 0;
	t->chunk = STREAM_FIRST;
	t->inserted = 0;
	t->records = 0;
}

static void transcript_destroy(void *st)
{
	struct transcript_state *t = st;

	transcript_reset(t);
	free(t->conv_ids.v);
	free(t->with_msgs.v);
	transcript_rows_free(&t->rows);
	cache_templates_clear(&t->templates);
	free(t);
}

static void strlist_add(struct strlist *l, char *s)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = xrealloc(l->v, l->cap * sizeof(char *));
	}
	l->v[l->n++] = s;
}

static bool transcript_add(void *st, const struct record *r, char *reason,
			   size_t reason_size)
{
	struct transcript_state *t = st;
	size_t before = t->rows.n_messages;
	char *cid = NULL;

	if (!transcript_handle(r->value, r->len, r->source, r->received_ms,
			       r->seq, &t->rows, &cid, reason, reason_size))
		return false;
	strlist_add(&t->conv_ids, cid);
	if (t->rows.n_messages > before)
		strlist_add(&t->with_msgs, cid);
	t->records++;
	return true;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts v and counts its distinct strings. */
static size_t distinct(char **v, size_t n)
{
	size_t d = 0;

	qsort(v, n, sizeof(*v), cmp_str);
	for (size_t i = 0; i < n; i++)
		d += i == 0 || strcmp(v[i - 1], v[i]) != 0;
	return d;
}

static const char SQL_COPY_MSG[] =
    "COPY messages (conversation_id, external_event_id, position, role,"
    " content, created_at) FROM STDIN (FORMAT binary)";

static bool stream_send(struct transcript_state *t, struct pgsink *ps,
			char *errstr, size_t errstr_size)
{
	const struct buf *m = &t->rows.messages;

	if (!t->streaming) {
		if (!pgsink_stream_begin(ps, errstr, errstr_size))
			return false;
		t->streaming = true;
	}
	if (!pgsink_stream_chunk(ps, SQL_COPY_MSG, m->data + t->sent,
				 m->len - t->sent, errstr, errstr_size))
		return false;
	t->sent = m->len;
	if (t->chunk < STREAM_MAX)
		t->chunk *= STREAM_GROWTH;
	return true;
}

static bool transcript_stream(void *st, struct pgsink *ps, char *errstr,
			      size_t errstr_size)
{
	struct transcript_state *t = st;

	if (t->fast_pause > 0 || t->rows.messages.len - t->sent < t->chunk)
		return true;
	return stream_send(t, ps, errstr, errstr_size);
}

/* The messages straight into the table: the rest of a stream, or all at
 * once. false = take the staged path (*failed: the transaction is
 * lost). */
static bool messages_fast(struct transcript_state *t, struct pgsink *ps,
			  bool *failed, char *errstr, size_t errstr_size)
{
	enum pgsink_copy_result r;

	*failed = false;
	if (t->streaming) {
		if (!stream_send(t, ps, errstr, errstr_size)) {
			*failed = true;
			return false;
		}
		t->streaming = false;
		r = pgsink_stream_end(ps, errstr, errstr_size);
	} else if (t->fast_pause > 0) {
		t->fast_pause--;
		return false;
	} else if (distinct(t->with_msgs.v, t->with_msgs.n) != t->with_msgs.n) {
		return false; /* the batch repeats itself */
	} else {
		r = pgsink_copy_unique(ps, SQL_COPY_MSG, &t->rows.messages,
				       errstr, errstr_size);
	}
	switch (r) {
	case PGSINK_COPIED:
		t->inserted = (long long)t->rows.n_messages;
		return true;
	case PGSINK_CONFLICT: t->fast_pause = FAST_PAUSE; return false;
	case PGSINK_FAILED: break;
	}
	*failed = true;
	return false;
}

static bool transcript_write(void *st, struct pgsink *ps, char *errstr,
			     size_t errstr_size)
{
	struct transcript_state *t = st;
	bool copied, failed, once;

	if (t->rows.n_conversations == 0)
		return true;
	/* The messages first: a stream holds the connection until it ends. */
	copied = t->rows.n_messages > 0 &&
		 messages_fast(t, ps, &failed, errstr, errstr_size);
	if (t->rows.n_messages > 0 && !copied && failed)
		return false;
	once = distinct(t->conv_ids.v, t->conv_ids.n) == t->conv_ids.n;
	if (!pgsink_copy(ps, "COPY sluice_stage_conv FROM STDIN",
			 &t->rows.conversations, errstr, errstr_size) ||
	    pgsink_exec(ps, once ? SQL_UPSERT_CONV_ONCE : SQL_UPSERT_CONV, 0,
			NULL, "conversations", errstr, errstr_size) < 0)
		return false;
	if (t->rows.n_messages == 0 || copied)
		return true;
	return pgsink_copy(ps,
			   "COPY sluice_stage_msg FROM STDIN (FORMAT binary)",
			   &t->rows.messages, errstr, errstr_size) &&
	       (t->inserted = pgsink_exec(ps, SQL_INSERT_MSG, 0, NULL,
					  "messages", errstr, errstr_size)) >=
		   0;
}

static void transcript_keys(void *st, struct cache_keys *out)
{
	struct transcript_state *t = st;

	for (size_t i = 0; i < t->conv_ids.n; i++)
		cache_keys_expand(out, &t->templates, "{conversation_id}",
				  t->conv_ids.v[i]);
}

static void transcript_summary(void *st, struct buf *line)
{
	struct transcript_state *t = st;
	long long skipped = (long long)t->rows.n_messages - t->inserted;

	t->saved += (unsigned long long)t->inserted;
	t->skipped += (unsigned long long)skipped;
	if (t->records == 0)
		return;
	buf_printf(line,
		   "saved %lld messages, skipped %lld duplicates, %zu "
		   "conversations",
		   t->inserted, skipped,
		   distinct(t->conv_ids.v, t->conv_ids.n));
}

static void transcript_totals(void *st, unsigned long long *saved,
			      unsigned long long *skipped)
{
	struct transcript_state *t = st;

	*saved += t->saved;
	*skipped += t->skipped;
}

const struct handler transcript_handler = {
    .kind = KIND_TRANSCRIPT,
    .staging_sql = SQL_STAGING,
    .create = transcript_create,
    .destroy = transcript_destroy,
    .reset = transcript_reset,
    .add = transcript_add,
    .stream = transcript_stream,
    .write = transcript_write,
    .keys = transcript_keys,
    .summary = transcript_summary,
    .totals = transcript_totals,
};
