/* What both daemons agree on about Kafka: record header names, config
 * passthrough, creating the topic at start-up. */
#include "kafka.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

bool kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *value,
		    char *errstr, size_t errstr_size)
{
	char err[256];

	if (rd_kafka_conf_set(conf, key, value, err, sizeof(err)) !=
	    RD_KAFKA_CONF_OK) {
		snprintf(errstr, errstr_size, "kafka.%s: %s", key, err);
		return false;
	}
	return true;
}

bool kafka_conf_apply(rd_kafka_conf_t *conf, const struct cfg_kv *kv,
		      char *errstr, size_t errstr_size)
{
	for (; kv; kv = kv->next)
		if (!kafka_conf_set(conf, kv->key + strlen("kafka."), kv->value,
				    errstr, errstr_size))
			return false;
	return true;
}

/* Runs on the thread that calls rd_kafka_poll()/rd_kafka_flush() on the
 * producer: its owner's. */
static void deliveries_cb(rd_kafka_t *rk, const rd_kafka_message_t *m,
			  void *opaque)
{
	struct kafka_deliveries *d = opaque;

	(void)rk;
	if (m->err) {
		d->failed++;
		log_warn("%s delivery failed: %s", d->what,
			 rd_kafka_err2str(m->err));
	}
}

/* The configuration a client of spec starts with, callbacks aside; NULL
 * with errstr naming the setting (and its FILE:LINE) librdkafka refused. */
static rd_kafka_conf_t *client_conf(const struct kafka_client_spec *spec,
				    char *errstr, size_t errstr_size)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char err[512];

	if (!kafka_conf_set(conf, "bootstrap.servers", spec->brokers, errstr,
			    errstr_size) ||
	    !kafka_conf_set(conf, "client.id", spec->client_id, errstr,
			    errstr_size))
		goto fail;
	for (const char *const *kv = spec->settings; kv && kv[0]; kv += 2)
		if (!kafka_conf_set(conf, kv[0], kv[1], errstr, errstr_size))
			goto fail;
	for (const struct cfg_kv *kv = spec->passthrough; kv; kv = kv->next) {
		const char *k = kv->key + strlen("kafka.");

		if (spec->connection_only && strncmp(k, "security.", 9) != 0 &&
		    strncmp(k, "sasl.", 5) != 0 && strncmp(k, "ssl.", 4) != 0)
			continue;
		if (!kafka_conf_set(conf, k, kv->value, err, sizeof(err))) {
			snprintf(errstr, errstr_size, "%s%s%s",
				 kv->origin ? kv->origin : "",
				 kv->origin ? ": " : "", err);
			goto fail;
		}
	}
	return conf;
fail:
	rd_kafka_conf_destroy(conf);
	return NULL;
}

/* rd_kafka_new()'s refusal names properties in backquotes ("`acks` must be
 * set to `all` when `enable.idempotence` is true"): add the FILE:LINE of
 * the kafka.* keys it names. */
static void new_failed(const struct kafka_client_spec *spec, const char *err,
		       char *errstr, size_t errstr_size)
{
	size_t n;

	snprintf(errstr, errstr_size, "%s: %s", spec->what, err);
	for (const struct cfg_kv *kv = spec->passthrough; kv; kv = kv->next) {
		char quoted[256];

		snprintf(quoted, sizeof(quoted), "`%s`",
			 kv->key + strlen("kafka."));
		if (!kv->origin || !strstr(err, quoted))
			continue;
		n = strlen(errstr);
		snprintf(errstr + n, errstr_size - n, " (%s at %s)", kv->key,
			 kv->origin);
	}
}

rd_kafka_t *kafka_client_new(const struct kafka_client_spec *spec, char *errstr,
			     size_t errstr_size)
{
	rd_kafka_conf_t *conf = client_conf(spec, errstr, errstr_size);
	rd_kafka_t *rk;
	char err[512];

	if (!conf)
		return NULL;
	rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
	rd_kafka_conf_set_opaque(conf, spec->opaque);
	if (spec->deliveries) {
		rd_kafka_conf_set_opaque(conf, spec->deliveries);
		rd_kafka_conf_set_dr_msg_cb(conf, deliveries_cb);
	}
	if (spec->callbacks)
		spec->callbacks(conf);
	rk = rd_kafka_new(spec->type, conf, err, sizeof(err));
	if (!rk) {
		new_failed(spec, err, errstr, errstr_size);
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	return rk; /* conf is owned by rk now */
}

/* Any librdkafka thread; the check's client says nothing worth showing
 * ("no bootstrap.servers" is the point of it). */
static void quiet_log_cb(const rd_kafka_t *rk, int level, const char *fac,
			 const char *buf)
{
	(void)rk;
	(void)level;
	(void)fac;
	(void)buf;
}

bool kafka_client_check(const struct kafka_client_spec *spec, char *errstr,
			size_t errstr_size)
{
	rd_kafka_conf_t *conf = client_conf(spec, errstr, errstr_size);
	rd_kafka_t *rk;
	char err[512];

	if (!conf)
		return false;
	/* rd_kafka_new() also refuses settings that contradict each other
	 * (acks=1 with idempotence); with no bootstrap servers it connects
	 * to nothing. */
	if (!kafka_conf_set(conf, "bootstrap.servers", "", errstr,
			    errstr_size)) {
		rd_kafka_conf_destroy(conf);
		return false;
	}
	rd_kafka_conf_set_log_cb(conf, quiet_log_cb);
	rk = rd_kafka_new(spec->type, conf, err, sizeof(err));
	if (!rk) {
		new_failed(spec, err, errstr, errstr_size);
		rd_kafka_conf_destroy(conf);
		return false;
	}
	rd_kafka_destroy(rk); /* conf with it */
	return true;
}

bool kafka_ensure_topic(rd_kafka_t *rk, const char *topic, int partitions,
			int timeout_ms, char *errstr, size_t errstr_size)
{
	rd_kafka_NewTopic_t *nt;
	rd_kafka_queue_t *q;
	rd_kafka_AdminOptions_t *opts;
	rd_kafka_event_t *ev;
	char err[256];
	bool ok = false;

	if (partitions <= 0)
		return true;
	nt = rd_kafka_NewTopic_new(topic, partitions, -1, err, sizeof(err));
	if (!nt) {
		snprintf(errstr, errstr_size, "topic %s: %s", topic, err);
		return false;
	}
	q = rd_kafka_queue_new(rk);
	opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
	rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, err,
						  sizeof(err));
	rd_kafka_CreateTopics(rk, &nt, 1, opts, q);
	ev = rd_kafka_queue_poll(q, timeout_ms + 1000);
	if (!ev) {
		snprintf(errstr, errstr_size, "topic %s: no answer in %d ms",
			 topic, timeout_ms);
	} else if (rd_kafka_event_error(ev)) {
		snprintf(errstr, errstr_size, "topic %s: %s", topic,
			 rd_kafka_event_error_string(ev));
	} else {
		const rd_kafka_CreateTopics_result_t *res =
		    rd_kafka_event_CreateTopics_result(ev);
		size_t n = 0;
		const rd_kafka_topic_result_t **tr =
		    rd_kafka_CreateTopics_result_topics(res, &n);
		rd_kafka_resp_err_t e = n ? rd_kafka_topic_result_error(tr[0])
					  : RD_KAFKA_RESP_ERR_NO_ERROR;

		if (e == RD_KAFKA_RESP_ERR_NO_ERROR ||
		    e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
			ok = true;
		else
			snprintf(errstr, errstr_size, "topic %s: %s", topic,
				 rd_kafka_topic_result_error_string(tr[0]));
	}
	if (ev)
		rd_kafka_event_destroy(ev);
	rd_kafka_AdminOptions_destroy(opts);
	rd_kafka_queue_destroy(q);
	rd_kafka_NewTopic_destroy(nt);
	return ok;
}

bool kafka_header(const rd_kafka_message_t *m, const char *name, char *out,
		  size_t outsz)
{
	rd_kafka_headers_t *hdrs = NULL;
	const void *val = NULL;
	size_t len = 0;

	out[0] = '\0';
	if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return false;
	if (rd_kafka_header_get_last(hdrs, name, &val, &len) !=
		RD_KAFKA_RESP_ERR_NO_ERROR ||
	    !val)
		return false;
	if (len >= outsz)
		len = outsz - 1;
	memcpy(out, val, len);
	out[len] = '\0';
	return true;
}

/* librdkafka says a refused login or TLS handshake at every reconnect of
 * every client (the worker runs several), and each client's "brokers are
 * down" after it: retrying cannot cure those, and error_cb hands the cause
 * to /readyz, so each class is logged once per KAFKA_NOTICE_EVERY_MS per
 * process, the rest at debug level. */
static int refusal_class(const char *fac, const char *buf)
{
	if (strstr(buf, "SASL authentication error"))
		return 1;
	if (strstr(buf, "SSL handshake failed") ||
	    strstr(buf, "in state SSL_HANDSHAKE"))
		return 2;
	if (strcmp(fac, "ERROR") == 0 && strstr(buf, "brokers are down"))
		return 3;
	return 0;
}

static pthread_mutex_t refusal_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t refusal_logged_ms[4];

static bool refusal_repeated(const char *fac, const char *buf)
{
	int c = refusal_class(fac, buf);
	int64_t now;
	bool repeated;

	if (!c)
		return false;
	now = util_mono_ms();
	pthread_mutex_lock(&refusal_lock);
	repeated = refusal_logged_ms[c] &&
		   now - refusal_logged_ms[c] < KAFKA_NOTICE_EVERY_MS;
	if (!repeated)
		refusal_logged_ms[c] = now;
	pthread_mutex_unlock(&refusal_lock);
	return repeated;
}

void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
		  const char *buf)
{
	(void)rk;
	if (level <= 5 && refusal_repeated(fac, buf))
		level = 7;
	/* syslog levels: 0-3 errors, 4-5 warnings, the rest is debug. */
	log_at(level <= 3   ? LOG_ERROR
	       : level <= 5 ? LOG_WARN
			    : LOG_DEBUG,
	       NULL, "rdkafka %s: %s", fac, buf);
}

rd_kafka_queue_t *kafka_topic_config_ask(rd_kafka_t *rk, const char *topic,
					 int timeout_ms)
{
	rd_kafka_ConfigResource_t *res =
	    rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_AdminOptions_t *opts =
	    rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
	char err[256];

	rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, err,
						  sizeof(err));
	rd_kafka_DescribeConfigs(rk, &res, 1, opts, q);
	rd_kafka_AdminOptions_destroy(opts);
	rd_kafka_ConfigResource_destroy(res);
	return q;
}

int kafka_topic_config_max_bytes(rd_kafka_queue_t *q, long *max)
{
	rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 0);
	int ret = -1;

	if (!ev)
		return 0;
	*max = -1;
	if (!rd_kafka_event_error(ev)) {
		size_t n = 0, nc = 0;
		const rd_kafka_ConfigResource_t **rs =
		    rd_kafka_DescribeConfigs_result_resources(
			rd_kafka_event_DescribeConfigs_result(ev), &n);
		const rd_kafka_ConfigEntry_t **cs =
		    n ? rd_kafka_ConfigResource_configs(rs[0], &nc) : NULL;

		for (size_t i = 0; i < nc; i++)
			if (strcmp(rd_kafka_ConfigEntry_name(cs[i]),
				   "max.message.bytes") == 0 &&
			    rd_kafka_ConfigEntry_value(cs[i])) {
				*max = atol(rd_kafka_ConfigEntry_value(cs[i]));
				ret = 1;
			}
	}
	rd_kafka_event_destroy(ev);
	return ret;
}

rd_kafka_resp_err_t kafka_produce_copy(rd_kafka_t *rk, const char *topic,
				       const rd_kafka_message_t *m,
				       rd_kafka_headers_t *h)
{
	rd_kafka_resp_err_t err = rd_kafka_producev(
	    rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(m->key, m->key_len),
	    RD_KAFKA_V_VALUE(m->payload, m->len),
	    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
	    RD_KAFKA_V_END);

	if (err)
		rd_kafka_headers_destroy(h);
	return err;
}

rd_kafka_t *kafka_range_reader_new(const char *what, const char *brokers,
				   const char *client_id, const char *group,
				   const struct cfg_kv *passthrough,
				   char *errstr, size_t errstr_size)
{
	const char *settings[] = {"group.id",
				  group,
				  "enable.auto.commit",
				  "false",
				  "enable.auto.offset.store",
				  "false",
				  "enable.partition.eof",
				  "true",
				  NULL};
	struct kafka_client_spec spec = {
	    .type = RD_KAFKA_CONSUMER,
	    .what = what,
	    .brokers = brokers,
	    .client_id = client_id,
	    .settings = settings,
	    .passthrough = passthrough,
	    .connection_only = true,
	};
	rd_kafka_t *rk = kafka_client_new(&spec, errstr, errstr_size);

	if (rk)
		rd_kafka_poll_set_consumer(rk);
	return rk;
}

int kafka_side_map(rd_kafka_t *rk, const char *topic, int32_t only,
		   struct kafka_part **out, char *errstr, size_t errstr_size)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	const struct rd_kafka_metadata_topic *t;
	struct kafka_part *ps = NULL;
	rd_kafka_resp_err_t err;
	int n = 0, rc = -1;

	*out = NULL;
	err = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
	if (err) {
		snprintf(errstr, errstr_size, "metadata of %s: %s", topic,
			 rd_kafka_err2str(err));
		goto out;
	}
	t = md->topic_cnt == 1 ? &md->topics[0] : NULL;
	if (!t || t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
	    (!t->err && t->partition_cnt == 0)) {
		rc = 0; /* nothing there (yet) */
		goto out;
	}
	if (t->err) {
		snprintf(errstr, errstr_size, "topic %s: %s", topic,
			 rd_kafka_err2str(t->err));
		goto out;
	}
	ps = xcalloc((size_t)t->partition_cnt, sizeof(*ps));
	for (int i = 0; i < t->partition_cnt; i++) {
		struct kafka_part *p = &ps[n];

		if (only >= 0 && t->partitions[i].id != only)
			continue;
		p->id = t->partitions[i].id;
		err = rd_kafka_query_watermark_offsets(rk, topic, p->id, &p->lo,
						       &p->hi, 10000);
		if (err) {
			snprintf(errstr, errstr_size,
				 "watermarks of %s [%d]: %s", topic, (int)p->id,
				 rd_kafka_err2str(err));
			goto out;
		}
		p->start = p->lo;
		n++;
	}
	rc = n;
	if (n > 0) {
		*out = ps;
		ps = NULL; /* the caller's now */
	}
out:
	free(ps);
	if (md)
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	return rc;
}

bool kafka_side_assign(rd_kafka_t *rk, const char *topic,
		       const struct kafka_part *parts, int n, char *errstr,
		       size_t errstr_size)
{
	rd_kafka_topic_partition_list_t *l =
	    rd_kafka_topic_partition_list_new(n > 0 ? n : 1);
	rd_kafka_resp_err_t err;

	for (int i = 0; i < n; i++)
		if (!parts[i].skip)
			rd_kafka_topic_partition_list_add(l, topic, parts[i].id)
			    ->offset = parts[i].start;
	err = rd_kafka_assign(rk, l);
	rd_kafka_topic_partition_list_destroy(l);
	if (err)
		snprintf(errstr, errstr_size, "assign: %s",
			 rd_kafka_err2str(err));
	return !err;
}

bool kafka_notice_take(struct kafka_notice *n, rd_kafka_resp_err_t err,
		       const char *verb, const char *subject,
		       const char *reason)
{
	const char *why = reason && reason[0] ? reason : rd_kafka_err2str(err);

	/* librdkafka 2.0 reports a failed handshake as _SSL the first time,
	 * as _TRANSPORT on the reconnects after. */
	if (err == RD_KAFKA_RESP_ERR__TRANSPORT && reason &&
	    strstr(reason, "in state SSL_HANDSHAKE"))
		err = RD_KAFKA_RESP_ERR__SSL;
	switch (err) {
	case RD_KAFKA_RESP_ERR__AUTHENTICATION:
	case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
	case RD_KAFKA_RESP_ERR__SSL:
	case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
	case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
	case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
		n->err = err;
		snprintf(n->subject, sizeof(n->subject), "%s",
			 subject ? subject : "");
		break;
	default: return false;
	}
	switch (err) {
	case RD_KAFKA_RESP_ERR__AUTHENTICATION:
	case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
		n->kind = KAFKA_DENIAL_AUTH;
		snprintf(
		    n->cause, sizeof(n->cause),
		    "authentication failed (check kafka.sasl.username and the password): %s",
		    why);
		return true;
	case RD_KAFKA_RESP_ERR__SSL:
		n->kind = KAFKA_DENIAL_AUTH;
		snprintf(
		    n->cause, sizeof(n->cause),
		    "TLS handshake failed (check kafka.ssl.ca.location): %s",
		    why);
		return true;
	case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		n->kind = KAFKA_DENIAL_ACL;
		snprintf(n->cause, sizeof(n->cause),
			 "not authorized to %s topic %s (an ACL is missing)",
			 verb ? verb : "use", subject ? subject : "(unknown)");
		return true;
	case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
		n->kind = KAFKA_DENIAL_ACL;
		snprintf(
		    n->cause, sizeof(n->cause),
		    "not authorized for consumer group %s (an ACL is missing)",
		    subject ? subject : "(unknown)");
		return true;
	case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
		n->kind = KAFKA_DENIAL_ACL;
		snprintf(
		    n->cause, sizeof(n->cause),
		    "not authorized for the cluster (IdempotentWrite is missing): %s",
		    why);
		return true;
	default: return false;
	}
}

bool kafka_notice_due(const struct kafka_notice *n, struct kafka_said *said)
{
	int64_t now = util_mono_ms();
	int use = 0;

	if (!n->cause[0])
		return false;
	for (int i = 0; i < 8; i++) {
		if (said->slot[i].ms && said->slot[i].err == n->err &&
		    strcmp(said->slot[i].subject, n->subject) == 0) {
			if (now - said->slot[i].ms < KAFKA_NOTICE_EVERY_MS)
				return false;
			use = i;
			break;
		}
		if (said->slot[i].ms < said->slot[use].ms)
			use = i; /* the oldest, or a free one */
	}
	said->slot[use].err = n->err;
	snprintf(said->slot[use].subject, sizeof(said->slot[use].subject), "%s",
		 n->subject);
	said->slot[use].ms = now;
	return true;
}

void kafka_notice_clear(struct kafka_notice *n)
{
	n->kind = KAFKA_DENIAL_NONE;
	n->cause[0] = '\0';
	n->err = RD_KAFKA_RESP_ERR_NO_ERROR;
	n->subject[0] = '\0';
}
