/* sluice-ingest's requests waiting for Kafka, from the record queued to
 * the answer. */
#include "pending.h"

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>

#include "../common/util.h"
#include "ingest.h"
#include "metrics.h"
#include "reply.h"

void pending_destroy(struct pending *p)
{
	struct ingest *ing = p->ing;

	if (p->prev)
		p->prev->next = p->next;
	else
		ing->pending = p->next;
	if (p->next)
		p->next->prev = p->prev;
	ing->inflight--;
	if (p->deadline)
		event_free(p->deadline);
	free(p->id);
	free(p->key);
	free(p->event_type);
	free(p->campaign_id);
	free(p);
}

/* Loop timer: Kafka has not confirmed within delivery_timeout_ms. The
 * request is answered now; the record's report, when it comes, finds the
 * pending without a request and is only counted. */
static void handle_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;

	(void)fd;
	(void)what;
	struct evhttp_request **req = p->group ? &p->group->req : &p->req;

	event_free(p->deadline);
	p->deadline = NULL;
	if (*req)
		reply_error(p->ing, *req, 503, "unavailable",
			    "Kafka did not confirm the event in time; retry "
			    "later",
			    NULL);
	*req = NULL;
}

void pending_link(struct ingest *ing, struct pending *p)
{
	struct timeval tv = util_ms_tv(ing->cfg.delivery_timeout_ms);

	p->started_ms = util_mono_ms();
	p->next = ing->pending;
	if (p->next)
		p->next->prev = p;
	ing->pending = p;
	ing->inflight++;
	p->deadline = evtimer_new(ing->base, handle_deadline, p);
	evtimer_add(p->deadline, &tv);
}

/* The group's answer once its last record reported. */
static void group_reported(struct ingest *ing, struct pending *p,
			   rd_kafka_resp_err_t err)
{
	struct pgroup *g = p->group;

	if (err && !g->err)
		g->err = err;
	if (--g->left > 0)
		return;
	if (g->req) {
		if (g->err) {
			char msg[256];

			snprintf(msg, sizeof(msg),
				 "not every record of the webhook could be "
				 "stored durably: %s; retry it whole",
				 rd_kafka_err2str(g->err));
			reply_error(ing, g->req, 503, "unavailable", msg, NULL);
		} else {
			cJSON *o = cJSON_CreateObject();

			cJSON_AddStringToObject(o, "status", "accepted");
			cJSON_AddStringToObject(o, "id", p->id);
			cJSON_AddNumberToObject(o, "records", g->n);
			cJSON_AddItemToObject(o, "senders", g->senders);
			g->senders = NULL; /* owned by o now */
			cJSON_AddStringToObject(o, "eventType", p->event_type);
			metrics_delivery(ing, util_mono_ms() - p->started_ms);
			reply_json(ing, g->req, p->success_status, o);
		}
	} else {
		ing->m.late_deliveries++;
	}
	cJSON_Delete(g->senders);
	free(g);
}

void pending_group_failed(struct ingest *ing, struct pending *p,
			  rd_kafka_resp_err_t err)
{
	group_reported(ing, p, err);
	pending_destroy(p);
}

void pending_delivered(struct pending *p, rd_kafka_resp_err_t err)
{
	struct ingest *ing = p->ing;

	if (p->group) {
		group_reported(ing, p, err);
	} else if (!p->req && !p->deadline) {
		/* answered 503 at its deadline; if Kafka took it after all,
		 * the sender's retry is de-duplicated downstream */
		ing->m.late_deliveries++;
	} else if (p->req) {
		if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
			reply_too_large(ing, p->req, 0);
		} else if (err) {
			char msg[256];

			snprintf(msg, sizeof(msg),
				 "the event could not be stored durably: %s; "
				 "retry later",
				 rd_kafka_err2str(err));
			reply_error(ing, p->req, 503, "unavailable", msg, NULL);
		} else {
			cJSON *o = cJSON_CreateObject();

			cJSON_AddStringToObject(o, "status", "accepted");
			cJSON_AddStringToObject(o, "id", p->id);
			cJSON_AddStringToObject(o, p->key_name, p->key);
			cJSON_AddStringToObject(o, "eventType", p->event_type);
			metrics_delivery(ing, util_mono_ms() - p->started_ms);
			reply_json(ing, p->req, p->success_status, o);
		}
	}
	pending_destroy(p);
}

void pending_abandon_all(struct ingest *ing)
{
	for (struct pending *p = ing->pending; p; p = p->next) {
		struct evhttp_request **req =
		    p->group ? &p->group->req : &p->req;

		if (*req)
			reply_error(ing, *req, 503, "unavailable",
				    "shutting down before Kafka confirmed the "
				    "event; retry",
				    NULL);
		*req = NULL;
	}
}
