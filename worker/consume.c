/* The Kafka consumer: group membership, cooperative rebalancing, seeking to
 * the offsets PostgreSQL holds, and forming batches. */
#include "consume.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/kafka.h"
#include "../common/log.h"
#include "../common/util.h"
#include "metrics.h"

struct consumer {
	rd_kafka_t *rk;
	const struct worker_config *cfg;
	struct pgsink *ps;
	volatile const int *stop;
	consume_flush_fn flush;
	consume_wait_fn wait;
	void *flush_arg;	   /* and wait's */
	rd_kafka_message_t **msgs; /* the batch being collected */
	size_t n;
	int assigned;
	bool fatal;	     /* librdkafka's consumer can never work again */
	unsigned assign_gen; /* see consume_assign_gen() */
	/* Next offsets committed to PostgreSQL but not yet told to Kafka:
	 * Kafka's copy only serves lag monitoring, so it is sent at most
	 * once a second instead of once a batch. */
	rd_kafka_topic_partition_list_t *to_commit;
	int64_t last_commit_ms;
	/* Credentials, certificate or an ACL refused: said once per cause,
	 * shown by /readyz until the consumer works. */
	struct kafka_notice denied;
	int wake_fds[2]; /* consumer queue → loop (consume_watch) */
	struct event *wake_ev;
	/* The flush callback runs: its records are the open batch. */
	bool in_batch;
	/* Inside rd_kafka_consumer_poll(), whose callbacks may wait on the
	 * loop (seek_to_stored): consume_serve() must not poll again. */
	bool polling;
	/* Paused by consume_serve() for the batch running, resumed after it
	 * (or before the next poll for records). */
	rd_kafka_topic_partition_list_t *paused;
	/* Records a poll returned while the batch was open, in their order:
	 * the next batch starts with them (librdkafka's position is already
	 * past them, so they are fetched no second time). */
	rd_kafka_message_t **held;
	size_t n_held, cap_held;
};

static void consume_commit_flush(struct consumer *c)
{
	if (!c->to_commit || c->to_commit->cnt == 0)
		return;
	rd_kafka_commit(c->rk, c->to_commit, 1);
	rd_kafka_topic_partition_list_destroy(c->to_commit);
	c->to_commit = NULL;
	c->last_commit_ms = util_mono_ms();
}

static rd_kafka_message_t *consume_poll(struct consumer *c, int timeout_ms)
{
	rd_kafka_message_t *m;

	c->polling = true;
	m = rd_kafka_consumer_poll(c->rk, timeout_ms);
	c->polling = false;
	return m;
}

/* The batch ended: its partitions fetch again, from the position after
 * the last record handed out (librdkafka keeps it across the pause). */
static void consume_resume(struct consumer *c)
{
	if (!c->paused)
		return;
	/* A partition revoked meanwhile answers with an error of its own
	 * in the list; that is fine. */
	rd_kafka_resume_partitions(c->rk, c->paused);
	log_debug("resumed %d partitions", c->paused->cnt);
	rd_kafka_topic_partition_list_destroy(c->paused);
	c->paused = NULL;
}

/* Hands the records collected so far to the flush callback. */
static void consume_flush_pending(struct consumer *c)
{
	size_t n = c->n;

	if (n == 0)
		return;
	c->in_batch = true;
	c->flush(c->flush_arg, c->msgs, n);
	c->in_batch = false;
	consume_resume(c);
	for (size_t i = 0; i < n; i++)
		rd_kafka_message_destroy(c->msgs[i]);
	c->n = 0;
}

/* Sets each partition's start to what PostgreSQL says was applied. Without
 * a stored offset the group's committed offset (or earliest) is used. */
static void seek_to_stored(struct consumer *c,
			   rd_kafka_topic_partition_list_t *parts)
{
	int n = parts->cnt;
	struct backoff backoff;
	int32_t *ids = xcalloc((size_t)n + 1, sizeof(*ids));
	int64_t *offs = xcalloc((size_t)n + 1, sizeof(*offs));
	char err[512];

	for (int i = 0; i < n; i++)
		ids[i] = parts->elems[i].partition;
	backoff_init(&backoff, c->cfg->retry_backoff_min_ms,
		     c->cfg->retry_backoff_max_ms);
	while (!pgsink_load_start(c->ps, ids, n, offs, err, sizeof(err))) {
		int wait;

		if (*c->stop) {
			log_warn(
			    "stopping before stored offsets could be read");
			goto done;
		}
		wait = backoff_next(&backoff);
		log_warn("reading stored offsets: %s; retrying in %d ms", err,
			 wait);
		metrics_retry();
		c->wait(c->flush_arg, wait);
	}
	for (int i = 0; i < n; i++) {
		parts->elems[i].offset =
		    offs[i] >= 0 ? offs[i] : RD_KAFKA_OFFSET_INVALID;
		log_info("assigned %s [%d] from %s %lld (group %s)",
			 parts->elems[i].topic, (int)parts->elems[i].partition,
			 offs[i] >= 0 ? "stored offset" : "group offset",
			 (long long)offs[i], c->cfg->group_id);
	}
done:
	free(ids);
	free(offs);
}

/* Partitions assigned while a batch keeps them paused: paused too, so
 * the batch's polls hand out none of their records. */
static void consume_pause_more(struct consumer *c,
			       rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_topic_partition_list_t *l =
	    rd_kafka_topic_partition_list_copy(parts);

	rd_kafka_pause_partitions(c->rk, l);
	for (int i = 0; i < l->cnt; i++)
		if (!rd_kafka_topic_partition_list_find(
			c->paused, l->elems[i].topic, l->elems[i].partition))
			rd_kafka_topic_partition_list_add(
			    c->paused, l->elems[i].topic,
			    l->elems[i].partition);
	rd_kafka_topic_partition_list_destroy(l);
}

/* Held records of revoked partitions: their next owner reads them from
 * the offset PostgreSQL holds. */
static void consume_drop_held(struct consumer *c,
			      const rd_kafka_topic_partition_list_t *parts)
{
	size_t k = 0;

	for (size_t i = 0; i < c->n_held; i++) {
		rd_kafka_message_t *m = c->held[i];

		if (rd_kafka_topic_partition_list_find(
			parts, rd_kafka_topic_name(m->rkt), m->partition))
			rd_kafka_message_destroy(m);
		else
			c->held[k++] = m;
	}
	c->n_held = k;
}

/* Every pipeline's consumer meets the same refusal: said once for all. */
static pthread_mutex_t said_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kafka_said said;

/* The consumer's thread. True when err is a refusal that retrying will
 * not cure; it is then logged at most once per cause a while. */
static bool denied(struct consumer *c, rd_kafka_resp_err_t err,
		   const char *topic, const char *reason)
{
	bool due;
	const char *subject =
	    err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED
		? c->cfg->group_id
		: (topic ? topic : c->cfg->topic);

	if (!kafka_notice_take(&c->denied, err, "read", subject, reason))
		return false;
	metrics_kafka_denied(c->denied.cause,
			     c->denied.kind == KAFKA_DENIAL_AUTH);
	pthread_mutex_lock(&said_lock);
	due = kafka_notice_due(&c->denied, &said);
	pthread_mutex_unlock(&said_lock);
	if (due)
		log_error("kafka: %s", c->denied.cause);
	return true;
}

/* Assigned partitions or a record: the consumer works. */
static void denial_cured(struct consumer *c)
{
	if (!c->denied.cause[0])
		return;
	log_info("kafka: the consumer works again");
	kafka_notice_clear(&c->denied);
	metrics_kafka_denied("", false);
}

/* Runs on the worker thread inside rd_kafka_consumer_poll(). */
static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
			 rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	struct consumer *c = opaque;
	bool cooperative =
	    strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
	rd_kafka_error_t *error = NULL;
	rd_kafka_resp_err_t ret = RD_KAFKA_RESP_ERR_NO_ERROR;

	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		seek_to_stored(c, parts);
		if (cooperative)
			error = rd_kafka_incremental_assign(rk, parts);
		else
			ret = rd_kafka_assign(rk, parts);
		c->assigned += parts->cnt;
		denial_cured(c);
		metrics_rebalance(true, parts);
		c->assign_gen++;
		if (c->paused)
			consume_pause_more(c, parts);
	} else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
		/* Finish what was fetched before the partitions go: its
		 * effects and offsets commit together, so the next owner
		 * starts exactly after it. Unless that batch is the one
		 * open (this runs inside consume_serve()): it goes on, and
		 * its commit is fenced by the offsets PostgreSQL holds, so
		 * whichever of it and the next owner commits second skips
		 * what the first applied. */
		if (!c->in_batch)
			consume_flush_pending(c);
		consume_drop_held(c, parts);
		if (!rd_kafka_assignment_lost(rk))
			consume_commit_flush(c);
		{
			/* Named, as "assigned" lines are, so an operator
			 * can follow each partition across the fleet. */
			struct buf names;

			buf_init(&names);
			buf_puts(&names, "");
			for (int i = 0; i < parts->cnt; i++)
				buf_printf(&names, " [%d]",
					   (int)parts->elems[i].partition);
			log_info("revoked %d partitions%s:%s", parts->cnt,
				 rd_kafka_assignment_lost(rk) ? " (lost)" : "",
				 names.data);
			buf_free(&names);
		}
		if (cooperative)
			error = rd_kafka_incremental_unassign(rk, parts);
		else
			ret = rd_kafka_assign(rk, NULL);
		c->assigned -= parts->cnt;
		metrics_rebalance(false, parts);
		if (c->assigned < 0)
			c->assigned = 0;
		c->assign_gen++;
	} else {
		log_error("rebalance failed: %s", rd_kafka_err2str(err));
		ret = rd_kafka_assign(rk, NULL);
		c->assign_gen++;
	}
	if (error) {
		log_error("incremental rebalance: %s",
			  rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	} else if (ret) {
		log_error("rebalance: %s", rd_kafka_err2str(ret));
	}
}

/* Runs on the consumer's thread, inside rd_kafka_consumer_poll(). */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	struct consumer *c = opaque;

	(void)rk;
	if (denied(c, err, NULL, reason))
		return;
	/* Brokers "down" because they refuse the login: said already. */
	if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
	    c->denied.kind != KAFKA_DENIAL_AUTH)
		log_warn("kafka: %s: %s", rd_kafka_err2name(err), reason);
	if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		metrics_kafka_down(reason);
}

/* Runs on the worker thread inside rd_kafka_consumer_poll(). */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
	(void)rk;
	(void)opaque;
	metrics_kafka_stats(json, len);
	return 0; /* librdkafka frees json */
}

static void consumer_callbacks(rd_kafka_conf_t *conf)
{
	rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	rd_kafka_conf_set_stats_cb(conf, stats_cb);
}

/* The consumer's settings, in one place for the start and the check. */
struct consumer_settings {
	const char *kv[20];
};

static void consumer_spec(const struct worker_config *cfg,
			  struct consumer_settings *cs,
			  struct kafka_client_spec *spec)
{
	/* How a fetch waits (docs/operations.md, "Latency"). Gathered: it
	 * answers once 16 KiB are there or after 10 ms, so a topic of small
	 * records under load (chat at 1,000 messages/s, or a topic every
	 * kind shares) costs a fetch per 16 KiB rather than one per record,
	 * and a quiet one waits at most the 10 ms; but an idle topic is
	 * asked a hundred times a second. Otherwise it answers at the first
	 * byte and an idle topic is asked twice a second: three idle kinds'
	 * consumers gathering took half a core of the broker beside a
	 * transcript backlog on two cores. */
	static const char *const settings[] = {
	    "group.id", NULL,	       /* filled below */
	    "fetch.wait.max.ms", NULL, /* filled below */
	    "fetch.min.bytes", NULL,   /* filled below */
	    "enable.auto.commit", "false", "enable.auto.offset.store", "false",
	    "auto.offset.reset", "earliest", "partition.assignment.strategy",
	    "cooperative-sticky",
	    /* broker states for /readyz */
	    "statistics.interval.ms", "1000", NULL};
	enum { N_SETTINGS = sizeof(settings) / sizeof(settings[0]) };
	_Static_assert(N_SETTINGS + 2 <= sizeof(cs->kv) / sizeof(cs->kv[0]),
		       "room for group.instance.id");

	memcpy(cs->kv, settings, sizeof(settings));
	cs->kv[1] = cfg->group_id;
	cs->kv[3] = cfg->gather_fetches ? "10" : "500";
	cs->kv[5] = cfg->gather_fetches ? "16384" : "1";
	/* Static membership (KIP-345): a worker restarted under the same id
	 * takes its member's place, and its partitions, without waiting for
	 * the old session to time out. librdkafka then sends no LeaveGroup
	 * on close, so a stopped static member's partitions wait for
	 * session.timeout.ms (docs/operations.md). */
	if (cfg->group_instance_id[0]) {
		cs->kv[N_SETTINGS - 1] = "group.instance.id";
		cs->kv[N_SETTINGS] = cfg->group_instance_id;
		cs->kv[N_SETTINGS + 1] = NULL;
	}
	*spec = (struct kafka_client_spec){
	    .type = RD_KAFKA_CONSUMER,
	    .what = "kafka consumer",
	    .brokers = cfg->brokers,
	    .client_id = "sluice-worker",
	    .settings = cs->kv,
	    .passthrough = cfg->kafka,
	};
}

bool consume_check_config(const struct worker_config *cfg, char *errstr,
			  size_t errstr_size)
{
	struct consumer_settings cs;
	struct kafka_client_spec spec;

	consumer_spec(cfg, &cs, &spec);
	return kafka_client_check(&spec, errstr, errstr_size);
}

struct consumer *consume_new(const struct worker_config *cfg, struct pgsink *ps,
			     volatile const int *stop, consume_flush_fn flush,
			     consume_wait_fn wait, void *flush_arg,
			     char *errstr, size_t errstr_size)
{
	struct consumer_settings cs;
	struct consumer *c = xcalloc(1, sizeof(*c));
	struct kafka_client_spec spec;
	rd_kafka_topic_partition_list_t *topics;
	rd_kafka_resp_err_t err;
	char e[512];

	consumer_spec(cfg, &cs, &spec);
	spec.opaque = c;
	spec.callbacks = consumer_callbacks;
	c->cfg = cfg;
	c->ps = ps;
	c->stop = stop;
	c->flush = flush;
	c->wait = wait;
	c->flush_arg = flush_arg;
	c->wake_fds[0] = c->wake_fds[1] = -1;
	c->msgs = xcalloc((size_t)cfg->batch_max, sizeof(*c->msgs));
	c->rk = kafka_client_new(&spec, errstr, errstr_size);
	if (!c->rk)
		goto fail;
	rd_kafka_poll_set_consumer(c->rk);
	if (cfg->group_instance_id[0])
		log_info("joining group %s as static member %s", cfg->group_id,
			 cfg->group_instance_id);
	if (!kafka_ensure_topic(c->rk, cfg->topic, cfg->topic_partitions, 5000,
				e, sizeof(e)))
		log_warn("could not ensure topic: %s", e);
	topics = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(topics, cfg->topic,
					  RD_KAFKA_PARTITION_UA);
	err = rd_kafka_subscribe(c->rk, topics);
	rd_kafka_topic_partition_list_destroy(topics);
	if (err) {
		snprintf(errstr, errstr_size, "subscribe %s: %s", cfg->topic,
			 rd_kafka_err2str(err));
		goto fail;
	}
	return c;
fail:
	if (c->rk)
		rd_kafka_destroy(c->rk);
	free(c->msgs);
	free(c);
	return NULL;
}

/* Takes one polled message into the batch, or logs a consumer event. */
static bool take(struct consumer *c, rd_kafka_message_t *m)
{
	if (m->err == RD_KAFKA_RESP_ERR__FATAL && !c->fatal) {
		char reason[512];
		rd_kafka_resp_err_t orig =
		    rd_kafka_fatal_error(c->rk, reason, sizeof(reason));

		log_error("kafka consumer failed for good: %s%s", reason,
			  orig == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID
			      ? " (another worker runs with the same "
				"group_instance_id)"
			      : "");
		c->fatal = true;
	} else if (m->err && m->err != RD_KAFKA_RESP_ERR__FATAL &&
		   m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF &&
		   !denied(c, m->err,
			   m->rkt ? rd_kafka_topic_name(m->rkt) : NULL,
			   rd_kafka_message_errstr(m))) {
		log_warn("consumer: %s", rd_kafka_message_errstr(m));
	}
	if (m->err) {
		rd_kafka_message_destroy(m);
		return false;
	}
	denial_cured(c);
	metrics_consumed(m->partition, m->offset);
	c->msgs[c->n++] = m;
	return true;
}

size_t consume_batch(struct consumer *c, int timeout_ms)
{
	rd_kafka_message_t *m;
	int64_t deadline;
	size_t n;

	consume_resume(c); /* paused by a batch run outside the flush */
	/* Records held back from the last batch come first: they precede
	 * whatever is fetched now. While some are left, nothing is polled,
	 * or a batch would carry later offsets of their partition and its
	 * commit would pass over them. */
	n = c->n_held < (size_t)c->cfg->batch_max ? c->n_held
						  : (size_t)c->cfg->batch_max;
	if (n > 0) {
		memcpy(c->msgs, c->held, n * sizeof(*c->msgs));
		memmove(c->held, c->held + n,
			(c->n_held - n) * sizeof(*c->held));
		c->n = n;
		c->n_held -= n;
	} else {
		m = consume_poll(c, timeout_ms);
		if (!m || !take(c, m)) {
			if (util_mono_ms() - c->last_commit_ms >= 1000)
				consume_commit_flush(c);
			return 0;
		}
	}
	/* Whatever is already fetched joins the batch: batches form by
	 * themselves under load and cost nothing when idle. */
	deadline = util_mono_ms() + c->cfg->batch_wait_ms;
	while (c->n > 0 && c->n < (size_t)c->cfg->batch_max && c->n_held == 0) {
		int64_t left = deadline - util_mono_ms();

		m = consume_poll(c, left > 0 ? (int)left : 0);
		if (!m)
			break;
		take(c, m);
	}
	n = c->n;
	consume_flush_pending(c);
	return n;
}

void consume_serve(struct consumer *c)
{
	rd_kafka_message_t *m;

	/* Also outside the flush callback: a batch of passed-over offsets
	 * only, committed from batch_idle(), retries as long as any. */
	if (c->polling || c->fatal)
		return;
	if (!c->paused) {
		rd_kafka_topic_partition_list_t *l = NULL;

		/* Paused, the partitions fetch nothing, and librdkafka drops
		 * what it had fetched beyond the batch (it is fetched again
		 * from the same position on resume): the poll below only
		 * serves the group, unless it hands out a record anyway. */
		if (rd_kafka_assignment(c->rk, &l) !=
			RD_KAFKA_RESP_ERR_NO_ERROR ||
		    !l)
			l = rd_kafka_topic_partition_list_new(0);
		rd_kafka_pause_partitions(c->rk, l);
		c->paused = l;
		log_debug(
		    "paused %d partitions (a long batch, or the operator's pause), serving the consumer meanwhile",
		    l->cnt);
	}
	/* A bounded number of events: the batch has work to get back to. */
	for (int i = 0; i < 100; i++) {
		m = consume_poll(c, 0);
		if (!m)
			break;
		if (m->err) {
			take(c, m); /* logs it, or notes a fatal error */
			continue;
		}
		metrics_consumed(m->partition, m->offset);
		if (c->n_held == c->cap_held) {
			c->cap_held = c->cap_held ? 2 * c->cap_held : 16;
			c->held =
			    xrealloc(c->held, c->cap_held * sizeof(*c->held));
		}
		c->held[c->n_held++] = m;
	}
}

void consume_commit_async(struct consumer *c, const int32_t *parts,
			  const int64_t *next_offsets, int n)
{
	if (!c->to_commit)
		c->to_commit = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++) {
		rd_kafka_topic_partition_t *tp =
		    rd_kafka_topic_partition_list_find(c->to_commit,
						       c->cfg->topic, parts[i]);

		if (!tp)
			tp = rd_kafka_topic_partition_list_add(
			    c->to_commit, c->cfg->topic, parts[i]);
		tp->offset = next_offsets[i];
	}
	if (util_mono_ms() - c->last_commit_ms >= 1000)
		consume_commit_flush(c);
}

void consume_offsets(const struct consumer *c, int32_t partition, int64_t *low,
		     int64_t *high, int64_t *position)
{
	rd_kafka_topic_partition_list_t *l =
	    rd_kafka_topic_partition_list_new(1);

	*low = *high = *position = -1;
	/* Cached values only: the high watermark comes with every fetch
	 * response, the position with every record handed out. */
	if (rd_kafka_get_watermark_offsets(c->rk, c->cfg->topic, partition, low,
					   high) != RD_KAFKA_RESP_ERR_NO_ERROR)
		*low = *high = -1;
	rd_kafka_topic_partition_list_add(l, c->cfg->topic, partition);
	if (rd_kafka_position(c->rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR &&
	    l->elems[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
		*position = l->elems[0].offset;
	rd_kafka_topic_partition_list_destroy(l);
}

/* On the loop: the consumer queue got something; the byte only wakes the
 * loop, the main loop polls. */
static void handle_wake(evutil_socket_t fd, short what, void *arg)
{
	char drain[256];

	(void)what;
	(void)arg;
	while (read(fd, drain, sizeof(drain)) > 0)
		;
}

bool consume_watch(struct consumer *c, struct event_base *base, char *errstr,
		   size_t errstr_size)
{
	rd_kafka_queue_t *q;

	if (pipe2(c->wake_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
		c->wake_fds[0] = c->wake_fds[1] = -1;
		snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
		return false;
	}
	c->wake_ev = event_new(base, c->wake_fds[0], EV_READ | EV_PERSIST,
			       handle_wake, c);
	if (!c->wake_ev || event_add(c->wake_ev, NULL) != 0) {
		snprintf(errstr, errstr_size,
			 "cannot watch the consumer queue");
		return false;
	}
	/* librdkafka writes the byte when the queue goes from empty to not
	 * empty; the main loop polls until it is empty again. */
	q = rd_kafka_queue_get_consumer(c->rk);
	rd_kafka_queue_io_event_enable(q, c->wake_fds[1], "1", 1);
	rd_kafka_queue_destroy(q);
	return true;
}

static void consume_unwatch(struct consumer *c)
{
	if (c->wake_fds[1] >= 0) {
		rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(c->rk);

		rd_kafka_queue_io_event_enable(q, -1, NULL, 0);
		rd_kafka_queue_destroy(q);
	}
	if (c->wake_ev)
		event_free(c->wake_ev);
	c->wake_ev = NULL;
	for (int i = 0; i < 2; i++)
		if (c->wake_fds[i] >= 0)
			close(c->wake_fds[i]);
	c->wake_fds[0] = c->wake_fds[1] = -1;
}

int consume_assigned(const struct consumer *c)
{
	return c->assigned;
}

bool consume_fatal(const struct consumer *c)
{
	return c->fatal;
}

unsigned consume_assign_gen(const struct consumer *c)
{
	return c->assign_gen;
}

int consume_assignment(struct consumer *c, int32_t **parts)
{
	rd_kafka_topic_partition_list_t *l = NULL;
	int n = 0;

	*parts = NULL;
	if (rd_kafka_assignment(c->rk, &l) != RD_KAFKA_RESP_ERR_NO_ERROR || !l)
		return 0;
	*parts = xcalloc((size_t)l->cnt + 1, sizeof(**parts));
	for (int i = 0; i < l->cnt; i++)
		if (strcmp(l->elems[i].topic, c->cfg->topic) == 0)
			(*parts)[n++] = l->elems[i].partition;
	rd_kafka_topic_partition_list_destroy(l);
	return n;
}

void consume_close(struct consumer *c)
{
	rd_kafka_resp_err_t err;

	if (!c)
		return;
	consume_resume(c);
	consume_flush_pending(c);
	consume_commit_flush(c);
	/* Leaves the group; the revoke callback flushes what is pending. */
	err = rd_kafka_consumer_close(c->rk);
	if (err)
		log_warn("consumer close: %s", rd_kafka_err2str(err));
	consume_flush_pending(c);
	if (c->to_commit)
		rd_kafka_topic_partition_list_destroy(c->to_commit);
	/* Held records were never applied: the next owner reads them. */
	for (size_t i = 0; i < c->n_held; i++)
		rd_kafka_message_destroy(c->held[i]);
	free(c->held);
	consume_unwatch(c);
	rd_kafka_destroy(c->rk);
	free(c->msgs);
	free(c);
}
