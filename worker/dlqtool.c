/* Mode "dlq": the dead-letter topic read, never changed. See dlqtool.h. */
#include "dlqtool.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/kafka.h"
#include "../common/log.h"
#include "../common/util.h"
#include "redrive.h"

/* Bytes of the body a listed record shows. */
#define PREVIEW 120

struct place {
	int32_t id;
	int64_t pos, end;
	bool done;
};

bool dlq_tool_parse_place(const char *s, struct dlq_tool_opts *o)
{
	char *end;
	long p;
	long long off;
	const char *sep = strpbrk(s, ":@");

	if (!sep)
		return false;
	p = strtol(s, &end, 10);
	if (end != sep || p < 0 || p > INT32_MAX)
		return false;
	off = strtoll(sep + 1, &end, 10);
	if (end == sep + 1 || *end || off < 0)
		return false;
	o->partition = (int32_t)p;
	o->offset = off;
	return true;
}

/* A header's value as text ("" when absent). */
static void header(const rd_kafka_message_t *m, const char *name, char *out,
		   size_t outsz)
{
	if (!kafka_header(m, name, out, outsz))
		out[0] = '\0';
}

/* ms since the epoch as RFC 3339 UTC, "" when not a number. */
static void utc(const char *ms_text, char out[48])
{
	char *end;
	long long ms = strtoll(ms_text, &end, 10);
	time_t t;
	struct tm tm;

	out[0] = '\0';
	if (!ms_text[0] || *end || ms <= 0)
		return;
	t = (time_t)(ms / 1000);
	if (!gmtime_r(&t, &tm))
		return;
	snprintf(out, 48, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* The body's first bytes for a terminal: control bytes and what is not
 * printable ASCII escaped, cut with "..." past PREVIEW. */
static void preview(const rd_kafka_message_t *m, struct buf *b)
{
	const unsigned char *p = m->payload;
	size_t n = m->len < PREVIEW ? m->len : PREVIEW;

	for (size_t i = 0; i < n; i++) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
			buf_append(b, &p[i], 1);
		else
			buf_printf(b, "\\x%02x", p[i]);
	}
	if (m->len > PREVIEW)
		buf_puts(b, "...");
}

static void print_text(const rd_kafka_message_t *m, bool whole)
{
	char reason[1024], origin[512], when[48], t[32], attempts[16];
	char worker[160], version[32];
	struct buf b;

	header(m, HDR_DLQ_REASON, reason, sizeof(reason));
	header(m, HDR_DLQ_ORIGIN, origin, sizeof(origin));
	header(m, HDR_DLQ_TIME, t, sizeof(t));
	header(m, HDR_REDRIVE_ATTEMPTS, attempts, sizeof(attempts));
	header(m, HDR_DLQ_WORKER, worker, sizeof(worker));
	header(m, HDR_DLQ_VERSION, version, sizeof(version));
	utc(t, when);
	buf_init(&b);
	if (!whole) {
		preview(m, &b);
		printf("%d:%lld  %s  origin %s  attempts %s  reason: %s\n"
		       "    %s\n",
		       (int)m->partition, (long long)m->offset,
		       when[0] ? when : "-", origin[0] ? origin : "-",
		       attempts[0] ? attempts : "0", reason[0] ? reason : "-",
		       b.data ? b.data : "");
	} else {
		rd_kafka_headers_t *hs = NULL;
		const char *name;
		const void *val;
		size_t len;

		printf("place: %d:%lld\norigin: %s\nreason: %s\ntime: %s\n"
		       "worker: %s\nversion: %s\nattempts: %s\n",
		       (int)m->partition, (long long)m->offset, origin, reason,
		       when, worker, version, attempts[0] ? attempts : "0");
		printf("key: %.*s\nheaders:\n", (int)m->key_len,
		       m->key ? (const char *)m->key : "");
		if (rd_kafka_message_headers(m, &hs) ==
		    RD_KAFKA_RESP_ERR_NO_ERROR)
			for (size_t i = 0; rd_kafka_header_get_all(
					       hs, i, &name, &val, &len) ==
					   RD_KAFKA_RESP_ERR_NO_ERROR;
			     i++)
				printf("  %s: %.*s\n", name, (int)len,
				       val ? (const char *)val : "");
		printf("value (%zu bytes):\n", m->len);
		fwrite(m->payload, 1, m->len, stdout);
		printf("\n");
	}
	buf_free(&b);
}

static void print_json(const rd_kafka_message_t *m, bool whole)
{
	cJSON *o = cJSON_CreateObject(), *h;
	rd_kafka_headers_t *hs = NULL;
	const char *name;
	const void *val;
	size_t len;
	char *s, *text;

	cJSON_AddNumberToObject(o, "partition", m->partition);
	cJSON_AddNumberToObject(o, "offset", (double)m->offset);
	text = xstrndup(m->key ? (const char *)m->key : "", m->key_len);
	cJSON_AddStringToObject(o, "key", text);
	free(text);
	h = cJSON_AddObjectToObject(o, "headers");
	if (rd_kafka_message_headers(m, &hs) == RD_KAFKA_RESP_ERR_NO_ERROR)
		for (size_t i = 0;
		     rd_kafka_header_get_all(hs, i, &name, &val, &len) ==
		     RD_KAFKA_RESP_ERR_NO_ERROR;
		     i++) {
			text = xstrndup(val ? (const char *)val : "", len);
			cJSON_DeleteItemFromObjectCaseSensitive(h, name);
			cJSON_AddStringToObject(h, name, text);
			free(text);
		}
	cJSON_AddNumberToObject(o, "bytes", (double)m->len);
	if (whole) {
		text = xstrndup(m->payload ? (const char *)m->payload : "",
				m->len);
		cJSON_AddStringToObject(o, "value", text);
	} else {
		size_t n = m->len < PREVIEW ? m->len : PREVIEW;

		text = xstrndup(m->payload ? (const char *)m->payload : "", n);
		cJSON_AddStringToObject(o, "preview", text);
	}
	free(text);
	s = cJSON_PrintUnformatted(o);
	if (!s)
		abort();
	puts(s);
	free(s);
	cJSON_Delete(o);
}

/* The partitions to read and where: every one from its start (list), or
 * the one record asked for (show). 0 ok, 1 failed, 2 nothing to read. */
static int plan(rd_kafka_t *rk, const struct worker_config *cfg,
		const struct dlq_tool_opts *o, struct place **out, int *n,
		char *err, size_t errsz)
{
	struct kafka_part *kp = NULL;
	struct place *ps;
	int k = kafka_side_map(rk, cfg->dlq_topic, o->show ? o->partition : -1,
			       &kp, err, errsz);

	if (k <= 0)
		return k < 0 ? 1 : 2;
	if (o->show) {
		if (o->offset < kp[0].lo || o->offset >= kp[0].hi) {
			free(kp);
			return 2;
		}
		kp[0].start = o->offset;
		kp[0].hi = o->offset + 1;
	}
	if (!kafka_side_assign(rk, cfg->dlq_topic, kp, k, err, errsz)) {
		free(kp);
		return 1;
	}
	ps = xcalloc((size_t)k, sizeof(*ps));
	for (int i = 0; i < k; i++)
		ps[i] = (struct place){kp[i].id, kp[i].start, kp[i].hi,
				       kp[i].start >= kp[i].hi};
	free(kp);
	*out = ps;
	*n = k;
	return 0;
}

int dlq_tool_run(const struct worker_config *cfg, const struct dlq_tool_opts *o,
		 volatile const int *stopping)
{
	char group[64], err[512] = "";
	struct place *ps = NULL;
	int n = 0, left, rc = 1;
	long printed = 0, total = 0;
	rd_kafka_t *rk;

	/* A group of its own that never commits: the tool leaves no trace
	 * in the broker's offsets. */
	snprintf(group, sizeof(group), "sluice-dlq-reader-%ld", (long)getpid());
	rk = kafka_range_reader_new("dead-letter reader", cfg->brokers,
				    "sluice-worker-dlq", group, cfg->kafka, err,
				    sizeof(err));
	if (!rk) {
		log_error("dlq: %s", err);
		return 1;
	}
	switch (plan(rk, cfg, o, &ps, &n, err, sizeof(err))) {
	case 0: break;
	case 2:
		if (o->show) {
			fprintf(
			    stderr,
			    "sluice-worker: %s holds no record at %d:%lld\n",
			    cfg->dlq_topic, (int)o->partition,
			    (long long)o->offset);
			rc = 3;
		} else {
			if (!o->json)
				printf("%s holds no records\n", cfg->dlq_topic);
			rc = 0;
		}
		goto out;
	default: log_error("dlq: %s", err); goto out;
	}
	left = 0;
	for (int i = 0; i < n; i++)
		left += !ps[i].done;
	while (left > 0 && !*stopping &&
	       (o->limit == 0 || printed < o->limit)) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
		struct place *p = NULL;

		if (!m)
			continue;
		for (int i = 0; i < n; i++)
			if (ps[i].id == m->partition)
				p = &ps[i];
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (p && !p->done) {
				p->done = true;
				left--;
			}
		} else if (m->err) {
			log_error("dlq: %s", rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			goto out;
		} else if (p && !p->done && m->offset < p->end) {
			total++;
			printed++;
			if (o->json)
				print_json(m, o->show);
			else
				print_text(m, o->show);
			if (m->offset + 1 >= p->end) {
				p->done = true;
				left--;
			}
		}
		rd_kafka_message_destroy(m);
	}
	if (!o->show && !o->json)
		printf("%ld records shown (%s%s)\n", total, cfg->dlq_topic,
		       left > 0 ? ", more left: --limit" : "");
	rc = *stopping ? 130 : 0;
out:
	fflush(stdout);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	free(ps);
	return rc;
}
