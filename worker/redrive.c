/* Mode "redrive": the dead-letter topic back into the topics its records
 * came from.
 *
 * Each record keeps its key (so it lands on its conversation's partition,
 * after what was written meanwhile), its value and its headers, less the
 * dead-letter ones, plus redrive-attempts (one more than it had) and
 * redrive-of. A record already sent back --max-attempts times stays where
 * it is and is reported. The redrive group's position is committed to
 * Kafka only once the producer has confirmed every record sent before it,
 * so a crash sends a record twice at worst; the worker's handlers are
 * idempotent, so that changes nothing downstream. */
#include "redrive.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/kafka.h"
#include "../common/log.h"
#include "../common/util.h"

#define CHUNK 500

struct rdpart {
	int32_t id;
	int64_t end, pos;
	bool done;
};

struct redrive {
	const struct worker_config *cfg;
	const struct redrive_opts *o;
	rd_kafka_t *consumer, *producer;
	struct rdpart *parts;
	int n;
	/* Failures since the last flush, counted on the main thread (from
	 * rd_kafka_flush()). */
	struct kafka_deliveries dr;
	unsigned long long read, sent, dead, unknown;
	char errstr[512];
};

static struct rdpart *part_find(struct redrive *r, int32_t id)
{
	for (int i = 0; i < r->n; i++)
		if (r->parts[i].id == id)
			return &r->parts[i];
	return NULL;
}

/* false with errstr empty: the dead-letter topic does not exist. */
static bool plan(struct redrive *r, const char *group)
{
	const char *topic = r->cfg->dlq_topic;
	struct kafka_part *kp = NULL;
	rd_kafka_topic_partition_list_t *l = NULL;
	rd_kafka_resp_err_t err;
	bool ok = false;

	r->n = kafka_side_map(r->consumer, topic, -1, &kp, r->errstr,
			      sizeof(r->errstr));
	if (r->n <= 0) {
		r->n = 0; /* 0: nothing was ever dead-lettered */
		goto out;
	}
	r->parts = xcalloc((size_t)r->n, sizeof(*r->parts));
	l = rd_kafka_topic_partition_list_new(r->n);
	for (int i = 0; i < r->n; i++) {
		r->parts[i] =
		    (struct rdpart){kp[i].id, kp[i].hi, kp[i].lo, false};
		rd_kafka_topic_partition_list_add(l, topic, kp[i].id);
	}
	/* Where this group left the topic last time. */
	err = rd_kafka_committed(r->consumer, l, 10000);
	if (err) {
		snprintf(r->errstr, sizeof(r->errstr),
			 "committed offsets of group %s: %s", group,
			 rd_kafka_err2str(err));
		goto out;
	}
	for (int i = 0; i < l->cnt; i++) {
		struct rdpart *p = part_find(r, l->elems[i].partition);

		if (p && l->elems[i].offset > p->pos)
			p->pos = l->elems[i].offset;
		if (p)
			p->done = p->pos >= p->end;
	}
	for (int i = 0; i < r->n; i++)
		kp[i].start = r->parts[i].pos;
	ok = kafka_side_assign(r->consumer, topic, kp, r->n, r->errstr,
			       sizeof(r->errstr));
out:
	if (l)
		rd_kafka_topic_partition_list_destroy(l);
	free(kp);
	return ok;
}

static bool all_done(const struct redrive *r)
{
	for (int i = 0; i < r->n; i++)
		if (!r->parts[i].done)
			return false;
	return true;
}

/* The record's headers for its way back: without the dead-letter ones,
 * with the attempt count. */
static rd_kafka_headers_t *headers_back(const rd_kafka_message_t *m,
					int attempts, const char *where)
{
	rd_kafka_headers_t *orig = NULL, *h;
	char n[16];

	if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
		h = rd_kafka_headers_copy(orig);
	else
		h = rd_kafka_headers_new(4);
	rd_kafka_header_remove(h, HDR_DLQ_REASON);
	rd_kafka_header_remove(h, HDR_DLQ_ORIGIN);
	rd_kafka_header_remove(h, HDR_DLQ_TIME);
	rd_kafka_header_remove(h, HDR_DLQ_WORKER);
	rd_kafka_header_remove(h, HDR_DLQ_VERSION);
	rd_kafka_header_remove(h, HDR_REDRIVE_ATTEMPTS);
	rd_kafka_header_remove(h, HDR_REDRIVE_OF);
	snprintf(n, sizeof(n), "%d", attempts);
	rd_kafka_header_add(h, HDR_REDRIVE_ATTEMPTS, -1, n, -1);
	rd_kafka_header_add(h, HDR_REDRIVE_OF, -1, where, -1);
	return h;
}

/* One dead-lettered record: sent back, or reported as staying dead. false
 * when the producer refused it (the run stops before committing). */
static bool redrive_one(struct redrive *r, const rd_kafka_message_t *m)
{
	char origin[512], reason[512], attempts_s[16], where[512];
	char *slash;
	int attempts;
	rd_kafka_headers_t *h;
	rd_kafka_resp_err_t err;

	snprintf(where, sizeof(where), "%s/%d@%lld", r->cfg->dlq_topic,
		 (int)m->partition, (long long)m->offset);
	kafka_header(m, HDR_DLQ_REASON, reason, sizeof(reason));
	kafka_header(m, HDR_REDRIVE_ATTEMPTS, attempts_s, sizeof(attempts_s));
	attempts = atoi(attempts_s);
	r->read++;
	if (!kafka_header(m, HDR_DLQ_ORIGIN, origin, sizeof(origin)) ||
	    !(slash = strrchr(origin, '/')) || slash == origin) {
		r->unknown++;
		printf("stays dead: %s has no %s header; reason: %s\n", where,
		       HDR_DLQ_ORIGIN, reason[0] ? reason : "(none)");
		return true;
	}
	if (r->o->max_attempts > 0 && attempts >= r->o->max_attempts) {
		r->dead++;
		printf("stays dead: %s (from %s) after %d attempts; reason: "
		       "%s\n",
		       where, origin, attempts, reason[0] ? reason : "(none)");
		return true;
	}
	r->sent++;
	if (r->o->dry_run) {
		printf("would send back: %s to %s (attempt %d); reason: %s\n",
		       where, origin, attempts + 1,
		       reason[0] ? reason : "(none)");
		return true;
	}
	*slash = '\0'; /* origin is now the topic */
	h = headers_back(m, attempts + 1, where);
	err = kafka_produce_copy(r->producer, origin, m, h);
	if (err) {
		snprintf(r->errstr, sizeof(r->errstr),
			 "producing to %.200s: %s", origin,
			 rd_kafka_err2str(err));
		return false;
	}
	log_ctx_info(where, "sent back to %s (attempt %d)", origin,
		     attempts + 1);
	return true;
}

/* Once every record sent is confirmed, the group's position moves. */
static bool confirm_and_commit(struct redrive *r)
{
	rd_kafka_topic_partition_list_t *l;
	rd_kafka_resp_err_t err;

	if (r->o->dry_run)
		return true;
	rd_kafka_flush(r->producer, 30000);
	if (r->dr.failed || rd_kafka_outq_len(r->producer) > 0) {
		snprintf(r->errstr, sizeof(r->errstr),
			 "Kafka did not confirm %d records sent back; the "
			 "redrive position is not moved",
			 r->dr.failed + rd_kafka_outq_len(r->producer));
		return false;
	}
	l = rd_kafka_topic_partition_list_new(r->n);
	for (int i = 0; i < r->n; i++)
		rd_kafka_topic_partition_list_add(l, r->cfg->dlq_topic,
						  r->parts[i].id)
		    ->offset = r->parts[i].pos;
	err = rd_kafka_commit(r->consumer, l, 0);
	rd_kafka_topic_partition_list_destroy(l);
	if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
		snprintf(r->errstr, sizeof(r->errstr), "commit: %s",
			 rd_kafka_err2str(err));
		return false;
	}
	return true;
}

/* Up to CHUNK records; false on a producer failure. */
static bool redrive_chunk(struct redrive *r)
{
	for (int k = 0; k < CHUNK && !all_done(r); k++) {
		rd_kafka_message_t *m =
		    rd_kafka_consumer_poll(r->consumer, k ? 0 : 500);
		struct rdpart *p;
		bool ok = true;

		if (!m)
			break;
		p = part_find(r, m->partition);
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (p && m->offset >= p->end)
				p->done = true;
		} else if (m->err) {
			log_warn("redrive: %s", rd_kafka_message_errstr(m));
		} else if (p && !p->done && m->offset < p->end) {
			ok = redrive_one(r, m);
			if (ok)
				p->pos = m->offset + 1;
			p->done = p->pos >= p->end;
		} else if (p) {
			p->done = true;
		}
		rd_kafka_message_destroy(m);
		if (!ok)
			return false;
	}
	return true;
}

int redrive_run(const struct worker_config *cfg, const char *group,
		const struct redrive_opts *o, volatile const int *stopping)
{
	static const char *const psettings[] = {"enable.idempotence", "true",
						NULL};
	struct redrive r = {.cfg = cfg, .o = o, .dr = {.what = "redrive"}};
	struct kafka_client_spec pspec = {
	    .type = RD_KAFKA_PRODUCER,
	    .what = "redrive producer",
	    .brokers = cfg->brokers,
	    .client_id = "sluice-worker-redrive",
	    .settings = psettings,
	    .passthrough = cfg->kafka,
	    .connection_only = true,
	    .deliveries = &r.dr,
	};
	char limit[48];
	int rc = 1;

	r.consumer = kafka_range_reader_new(
	    "redrive consumer", cfg->brokers, "sluice-worker-redrive", group,
	    cfg->kafka, r.errstr, sizeof(r.errstr));
	if (!r.consumer)
		goto out;
	if (!o->dry_run) {
		r.producer =
		    kafka_client_new(&pspec, r.errstr, sizeof(r.errstr));
		if (!r.producer)
			goto out;
	}
	if (!plan(&r, group)) {
		if (!r.errstr[0]) {
			printf("nothing to redrive: %s holds no records\n",
			       cfg->dlq_topic);
			rc = 0;
		}
		goto out;
	}
	if (o->max_attempts > 0)
		log_info("redriving %s as group %s (at most %d attempts)%s",
			 cfg->dlq_topic, group, o->max_attempts,
			 o->dry_run ? "; dry run: nothing is sent" : "");
	else
		log_info("redriving %s as group %s (no limit on attempts)%s",
			 cfg->dlq_topic, group,
			 o->dry_run ? "; dry run: nothing is sent" : "");
	while (!all_done(&r) && !*stopping) {
		if (!redrive_chunk(&r) || !confirm_and_commit(&r))
			goto out;
	}
	if (!confirm_and_commit(&r))
		goto out;
	rc = all_done(&r) ? 0 : 130;
	if (o->max_attempts > 0)
		snprintf(limit, sizeof(limit), "%d attempts or more",
			 o->max_attempts);
	else
		snprintf(limit, sizeof(limit), "no limit on attempts");
	printf("redrive %s: %llu records read, %llu %s, %llu stay dead "
	       "(%s), %llu without an origin\n",
	       rc == 0 ? "done" : "stopped", r.read, r.sent,
	       o->dry_run ? "would be sent back" : "sent back", r.dead, limit,
	       r.unknown);
out:
	if (rc == 1)
		log_error("redrive: %s", r.errstr);
	fflush(stdout);
	if (r.consumer) {
		rd_kafka_consumer_close(r.consumer);
		rd_kafka_destroy(r.consumer);
	}
	if (r.producer) {
		rd_kafka_flush(r.producer, 10000);
		rd_kafka_destroy(r.producer);
	}
	free(r.parts);
	return rc;
}
