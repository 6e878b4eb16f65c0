/* The worker's counters for GET /metrics: what the batch, the consumer and
 * the cache report through one-line hooks, plus what they already count,
 * rendered in the Prometheus text format. */
#include "metrics.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "batch.h"
#include "cache.h"
#include "consume.h"
#include "contexts.h"
#include "handlers/handler.h"

#define N_RECORD_BUCKETS 12
#define N_MS_BUCKETS 12

static const long record_le[N_RECORD_BUCKETS] = {
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000};
static const int64_t ms_le[N_MS_BUCKETS] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000};

/* An assigned partition and the next offset PostgreSQL holds for it
 * (-1 while unknown: no stored offset and nothing committed yet). */
struct part {
	int32_t partition;
	int64_t next;
};

static struct {
	uint64_t records_le[N_RECORD_BUCKETS + 1]; /* last: +Inf */
	uint64_t ms_le[N_MS_BUCKETS + 1];
	uint64_t observed, records_sum;
	int64_t ms_sum;
	uint64_t retries;
	uint64_t assigns, revokes;
	uint64_t leads, lookups, lookup_failures, hits, misses, lease_waits;
	int peak_inflight;
	struct part *parts;
	int n_parts, cap_parts;
	/* Kafka, from the statistics: -1 = nothing known yet. */
	int brokers_up, brokers;
	char kafka_why[160];
} m = {.brokers_up = -1};

void metrics_cleanup(void)
{
	free(m.parts);
	m.parts = NULL;
	m.n_parts = m.cap_parts = 0;
}

void metrics_batch(size_t records, int64_t ms, const struct contexts_stats *s)
{
	int i;

	for (i = 0; i < N_RECORD_BUCKETS && (long)records > record_le[i]; i++)
		;
	m.records_le[i]++;
	for (i = 0; i < N_MS_BUCKETS && ms > ms_le[i]; i++)
		;
	m.ms_le[i]++;
	m.observed++;
	m.records_sum += records;
	m.ms_sum += ms;
	if (!s)
		return;
	m.leads += s->leads;
	m.lookups += s->lookups;
	m.lookup_failures += s->failures;
	m.hits += s->hits;
	m.misses += s->misses;
	m.lease_waits += s->lease_waits;
	if (s->peak_inflight > m.peak_inflight)
		m.peak_inflight = s->peak_inflight;
}

static struct part *part_find(int32_t p)
{
	for (int i = 0; i < m.n_parts; i++)
		if (m.parts[i].partition == p)
			return &m.parts[i];
	return NULL;
}

void metrics_committed(const int32_t *parts, const int64_t *next, int n)
{
	for (int i = 0; i < n; i++) {
		struct part *p = part_find(parts[i]);

		if (p)
			p->next = next[i];
	}
}

void metrics_consumed(int32_t partition, int64_t offset)
{
	struct part *p = part_find(partition);

	if (p && p->next < 0)
		p->next = offset;
}

void metrics_retry(void)
{
	m.retries++;
}

void metrics_rebalance(bool assign, const rd_kafka_topic_partition_list_t *l)
{
	if (assign)
		m.assigns++;
	else
		m.revokes++;
	for (int i = 0; i < l->cnt; i++) {
		int32_t id = l->elems[i].partition;
		struct part *p = part_find(id);

		if (!assign) {
			if (p)
				*p = m.parts[--m.n_parts];
			continue;
		}
		if (!p) {
			if (m.n_parts == m.cap_parts) {
				m.cap_parts = m.cap_parts ? m.cap_parts * 2 : 8;
				m.parts =
				    realloc(m.parts, (size_t)m.cap_parts *
							 sizeof(*m.parts));
				if (!m.parts)
					abort();
			}
			p = &m.parts[m.n_parts++];
			p->partition = id;
		}
		p->next = l->elems[i].offset >= 0 ? l->elems[i].offset : -1;
	}
}

/* Runs on the worker thread inside rd_kafka_consumer_poll(). Brokers with
 * a node id count (a bootstrap entry takes its broker's id once metadata
 * names it); the others only while none has one; logical and internal
 * entries (the group coordinator) are views of a real one. */
void metrics_kafka_stats(const char *json, size_t len)
{
	cJSON *doc = cJSON_ParseWithLength(json, len);
	const cJSON *brokers = cJSON_GetObjectItemCaseSensitive(doc, "brokers");
	const cJSON *b;
	int up = 0, n = 0, boot_up = 0, boot = 0;
	char states[96] = "";

	if (!cJSON_IsObject(brokers)) {
		cJSON_Delete(doc);
		return;
	}
	cJSON_ArrayForEach(b, brokers)
	{
		const cJSON *src =
		    cJSON_GetObjectItemCaseSensitive(b, "source");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(b, "nodeid");
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(b, "state");
		bool is_up =
		    cJSON_IsString(st) && strcmp(st->valuestring, "UP") == 0;

		if (!cJSON_IsString(src) ||
		    strcmp(src->valuestring, "logical") == 0 ||
		    strcmp(src->valuestring, "internal") == 0)
			continue;
		if (cJSON_IsNumber(id) && id->valueint >= 0) {
			n++;
			up += is_up;
			if (!is_up && cJSON_IsString(st) &&
			    strlen(states) + strlen(st->valuestring) + 2 <
				sizeof(states))
				snprintf(states + strlen(states),
					 sizeof(states) - strlen(states),
					 "%s%s", states[0] ? "," : "",
					 st->valuestring);
		} else {
			boot++;
			boot_up += is_up;
		}
	}
	if (n == 0) {
		n = boot;
		up = boot_up;
	}
	m.brokers = n;
	m.brokers_up = up;
	if (up == 0)
		snprintf(m.kafka_why, sizeof(m.kafka_why),
			 "no broker up (%d known%s%s)", n,
			 states[0] ? ": " : "", states);
	cJSON_Delete(doc);
}

void metrics_kafka_down(const char *reason)
{
	m.brokers_up = 0;
	snprintf(m.kafka_why, sizeof(m.kafka_why), "no broker up (%s)", reason);
}

bool metrics_kafka_up(char *why, size_t why_size)
{
	if (m.brokers_up != 0)
		return true;
	snprintf(why, why_size, "%s", m.kafka_why);
	return false;
}

/* One kind's line of sluice_worker_rows_written_total. */
static void put_kind(void *arg, const char *kind, unsigned long long saved,
		     unsigned long long skipped)
{
	(void)skipped;
	buf_printf(arg, "sluice_worker_rows_written_total{kind=\"%s\"} %llu\n",
		   kind, saved);
}

static void put_counter(struct buf *out, const char *name, const char *help,
			unsigned long long v)
{
	buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name,
		   help, name, name, v);
}

static void put_gauge(struct buf *out, const char *name, const char *help,
		      long long v)
{
	buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help,
		   name, name, v);
}

static void put_lag(struct buf *out, const struct consumer *c)
{
	buf_puts(out, "# HELP sluice_worker_partition_lag Records in an "
		      "assigned partition not yet committed to PostgreSQL.\n"
		      "# TYPE sluice_worker_partition_lag gauge\n");
	for (int i = 0; c && i < m.n_parts; i++) {
		int64_t lo, hi, pos, next = m.parts[i].next, lag;

		consume_offsets(c, m.parts[i].partition, &lo, &hi, &pos);
		if (hi < 0)
			continue; /* nothing fetched yet: unknown */
		/* Nothing stored and nothing consumed yet: consumption
		 * starts where librdkafka says (its position, else the log
		 * start). */
		if (next < 0)
			next = pos >= 0 ? pos : lo;
		lag = next >= 0 && hi > next ? hi - next : 0;
		buf_printf(out,
			   "sluice_worker_partition_lag{partition=\"%d\"} "
			   "%lld\n",
			   (int)m.parts[i].partition, (long long)lag);
	}
}

static void put_histograms(struct buf *out)
{
	uint64_t cum = 0;

	buf_puts(out,
		 "# HELP sluice_worker_batch_records Records per committed "
		 "batch.\n# TYPE sluice_worker_batch_records histogram\n");
	for (int i = 0; i <= N_RECORD_BUCKETS; i++) {
		cum += m.records_le[i];
		if (i < N_RECORD_BUCKETS)
			buf_printf(out,
				   "sluice_worker_batch_records_bucket{le=\"%"
				   "ld\"} %llu\n",
				   record_le[i], (unsigned long long)cum);
		else
			buf_printf(out,
				   "sluice_worker_batch_records_bucket{le=\"+"
				   "Inf\"} %llu\n",
				   (unsigned long long)cum);
	}
	buf_printf(out,
		   "sluice_worker_batch_records_sum %llu\n"
		   "sluice_worker_batch_records_count %llu\n",
		   (unsigned long long)m.records_sum,
		   (unsigned long long)m.observed);
	cum = 0;
	buf_puts(out,
		 "# HELP sluice_worker_batch_duration_seconds Time from "
		 "a batch's first attempt to its commit and "
		 "invalidation, retries included.\n"
		 "# TYPE sluice_worker_batch_duration_seconds histogram\n");
	for (int i = 0; i <= N_MS_BUCKETS; i++) {
		cum += m.ms_le[i];
		if (i < N_MS_BUCKETS)
			buf_printf(
			    out,
			    "sluice_worker_batch_duration_seconds_bucket{"
			    "le=\"%g\"} %llu\n",
			    (double)ms_le[i] / 1000.0, (unsigned long long)cum);
		else
			buf_printf(
			    out,
			    "sluice_worker_batch_duration_seconds_bucket{"
			    "le=\"+Inf\"} %llu\n",
			    (unsigned long long)cum);
	}
	buf_printf(out,
		   "sluice_worker_batch_duration_seconds_sum %.3f\n"
		   "sluice_worker_batch_duration_seconds_count %llu\n",
		   (double)m.ms_sum / 1000.0, (unsigned long long)m.observed);
}

void metrics_render(struct buf *out, const struct batch *b,
		    const struct consumer *c, const struct cache *cache)
{
	struct batch_totals t = {0};
	unsigned long long inv = 0, removed = 0;

	if (b)
		batch_totals(b, &t);
	if (cache)
		cache_totals(cache, &inv, &removed);
	put_lag(out, c);
	put_histograms(out);
	put_counter(out, "sluice_worker_batches_total",
		    "Batches committed to PostgreSQL.", t.batches);
	put_counter(out, "sluice_worker_records_total",
		    "Kafka records in committed batches.", t.records);
	buf_puts(out, "# HELP sluice_worker_rows_written_total Rows a kind's "
		      "records added or changed (transcript messages, campaign "
		      "outbox rows, chat messages).\n"
		      "# TYPE sluice_worker_rows_written_total counter\n");
	if (b)
		batch_kind_totals(b, put_kind, out);
	put_counter(out, "sluice_worker_duplicates_total",
		    "Rows skipped because they were already stored.",
		    t.skipped);
	put_counter(out, "sluice_worker_dead_letters_total",
		    "Records sent to the dead-letter topic.", t.dead);
	put_counter(out, "sluice_worker_retries_total",
		    "Transient failures retried with back-off (a batch, "
		    "reading stored offsets).",
		    m.retries);
	buf_printf(out,
		   "# HELP sluice_worker_rebalances_total Partition "
		   "assignments and revocations.\n"
		   "# TYPE sluice_worker_rebalances_total counter\n"
		   "sluice_worker_rebalances_total{type=\"assign\"} %llu\n"
		   "sluice_worker_rebalances_total{type=\"revoke\"} %llu\n",
		   (unsigned long long)m.assigns,
		   (unsigned long long)m.revokes);
	put_counter(out, "sluice_worker_invalidations_total",
		    "Invalidations carried out in Redis after commits (keys, "
		    "patterns, version bumps), deferred ones included.",
		    inv);
	put_counter(out, "sluice_worker_cache_keys_removed_total",
		    "Redis keys the invalidations removed.", removed);
	put_gauge(out, "sluice_worker_invalidations_owed",
		  "Invalidations deferred while Redis is unreachable.",
		  cache ? (long long)cache_pending(cache) : 0);
	put_counter(out, "sluice_worker_lead_contexts_total",
		    "Distinct lead contexts batches asked for.", m.leads);
	put_counter(out, "sluice_worker_lead_lookups_total",
		    "Calls to the lead-context source, retries included.",
		    m.lookups);
	put_counter(out, "sluice_worker_lead_lookup_failures_total",
		    "Lead-context source calls that failed or timed out.",
		    m.lookup_failures);
	put_counter(out, "sluice_worker_lead_cache_hits_total",
		    "Lead contexts served by Redis.", m.hits);
	put_counter(out, "sluice_worker_lead_cache_misses_total",
		    "Lead contexts not in Redis (or Redis down).", m.misses);
	put_counter(out, "sluice_worker_lead_lease_waits_total",
		    "Waits for another worker's fill of a lead context.",
		    m.lease_waits);
	put_gauge(out, "sluice_worker_lead_lookups_peak_in_flight",
		  "Most lead-context lookups in flight at once in any batch.",
		  m.peak_inflight);
	put_gauge(out, "sluice_worker_partitions_assigned",
		  "Partitions this worker owns.", c ? consume_assigned(c) : 0);
	put_gauge(out, "sluice_worker_kafka_brokers_up",
		  "Kafka brokers up, by librdkafka's statistics (-1 = not "
		  "known yet).",
		  m.brokers_up);
}
