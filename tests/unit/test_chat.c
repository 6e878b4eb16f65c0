/* WhatsApp webhooks: what both daemons accept, who the people are, the
 * walk over one person's items, phone digits. */
#include <stdlib.h>
#include <string.h>

#include "../../common/chat.h"
#include "check.h"

#define HEAD                                                                   \
	"{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"W\","  \
	"\"changes\":[{\"field\":\"messages\",\"value\":{"                     \
	"\"metadata\":{\"display_phone_number\":\"15550001111\","              \
	"\"phone_number_id\":\"P\"},"
#define TAIL "}}]}]}"
#define MSG(from, id, body)                                                    \
	"{\"from\":\"" from "\",\"id\":\"" id                                  \
	"\",\"timestamp\":\"1732350000\","                                     \
	"\"type\":\"text\",\"text\":{\"body\":\"" body "\"}}"
#define STATUS(to, id) STATUS_OF(to, id, "read")
#define STATUS_OF(to, id, st)                                                  \
	"{\"id\":\"" id "\",\"status\":\"" st                                  \
	"\",\"timestamp\":\"1732350001\",\"recipient_id\":\"" to "\"}"
#define STATUS_PATH "$.entry[0].changes[0].value.statuses[0].status"

static const struct {
	const char *json;
	bool ok;
	const char *path;
} cases[] = {
    {HEAD "\"messages\":[" MSG("1", "a", "hi") "]" TAIL, true, NULL},
    {HEAD "\"statuses\":[" STATUS("1", "o") "]" TAIL, true, NULL},
    {"{\"object\":\"whatsapp_business_account\",\"entry\":[{\"changes\":"
     "[{\"field\":\"other\",\"value\":{}}]}]}",
     true, NULL},
    {"{\"object\":\"whatsapp_business_account\"}", false, "$.entry"},
    /* another product's webhook, even one with nothing for sluice */
    {"{\"object\":\"page\",\"entry\":[{\"changes\":[{\"field\":\"feed\","
     "\"value\":{}}]}]}",
     false, "$.object"},
    {"{\"object\":\"x\"}", false, "$.object"},
    {"{\"object\":7,\"entry\":[]}", false, "$.object"},
    {"{\"entry\":[]}", false, "$.object"},
    /* statuses: Meta's documented values only */
    {HEAD "\"statuses\":[" STATUS_OF("1", "o", "sent") "]" TAIL, true, NULL},
    {HEAD "\"statuses\":[" STATUS_OF("1", "o", "delivered") "]" TAIL, true,
     NULL},
    {HEAD "\"statuses\":[" STATUS_OF("1", "o", "failed") "]" TAIL, true, NULL},
    {HEAD "\"statuses\":[" STATUS_OF("1", "o", "deleted") "]" TAIL, true, NULL},
    {HEAD "\"statuses\":[" STATUS_OF("1", "o", "warning") "]" TAIL, true, NULL},
    {HEAD "\"statuses\":[" STATUS_OF("1", "o", "exploded") "]" TAIL, false,
     STATUS_PATH},
    {HEAD "\"statuses\":[" STATUS_OF("1", "o", "Read") "]" TAIL, false,
     STATUS_PATH},
    {HEAD "\"statuses\":[" STATUS_OF("1", "o", "read ") "]" TAIL, false,
     STATUS_PATH},
    {HEAD "\"messages\":[{\"id\":\"a\",\"type\":\"text\"}]" TAIL, false,
     "$.entry[0].changes[0].value.messages[0].from"},
    {HEAD "\"messages\":[" MSG("12/34\\n5", "a", "x") "]" TAIL, false,
     "$.entry[0].changes[0].value.messages[0].from"},
    {HEAD "\"messages\":[" MSG("1:2", "a", "x") "]" TAIL, false,
     "$.entry[0].changes[0].value.messages[0].from"},
    {HEAD "\"messages\":[" MSG("1", "", "x") "]" TAIL, false,
     "$.entry[0].changes[0].value.messages[0].id"},
    {HEAD "\"messages\":[{\"from\":\"1\",\"id\":\"a\",\"type\":\"text\","
	  "\"timestamp\":\"12ab\"}]" TAIL,
     false, "$.entry[0].changes[0].value.messages[0].timestamp"},
    {HEAD "\"messages\":[{\"from\":\"1\",\"id\":\"a\",\"type\":\"text\","
	  "\"text\":{\"body\":5}}]" TAIL,
     false, "$.entry[0].changes[0].value.messages[0].text.body"},
    {"{\"object\":\"whatsapp_business_account\",\"entry\":[{\"changes\":[{"
     "\"value\":{\"messages\":[" MSG("1", "a", "x") "]}}]}]}",
     false, "$.entry[0].changes[0].value.metadata.display_phone_number"},
};

struct seen {
	char ids[8][16];
	int n;
};

static void collect(void *arg, const struct chat_item *it)
{
	struct seen *s = arg;
	const cJSON *id = cJSON_GetObjectItem(it->json, "id");

	if (s->n < 8)
		snprintf(s->ids[s->n++], 16, "%s%s", it->is_status ? "s:" : "",
			 id->valuestring);
}

int main(void)
{
	char path[160], msg[200], digits[16];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cJSON *doc = cJSON_Parse(cases[i].json);
		bool ok =
		    chat_validate(doc, path, sizeof(path), msg, sizeof(msg));

		CHECK(doc != NULL, "case %zu does not parse", i);
		CHECK(ok == cases[i].ok, "case %zu: %s (%s %s)", i,
		      cases[i].json, path, msg);
		if (!ok && !cases[i].ok)
			CHECK_STR(path, cases[i].path, "path");
		cJSON_Delete(doc);
	}
	{
		/* Two people interleaved, a status: each person's items in
		 * order, people in order of first appearance. */
		cJSON *doc = cJSON_Parse(
		    HEAD "\"messages\":[" MSG("A", "a1", "x") "," MSG(
			"B", "b1", "x") "," MSG("A", "a2",
						"x") "],\"statuses\":"
						     "[" STATUS("C",
								"c1") "]" TAIL);
		const char *who[4];
		struct seen s = {.n = 0};

		CHECK(chat_senders(doc, who, 4) == 3, "three people");
		CHECK_STR(who[0], "A", "first");
		CHECK_STR(who[1], "B", "second");
		CHECK_STR(who[2], "C", "status recipient");
		chat_each(doc, "A", collect, &s);
		CHECK(s.n == 2, "A has %d items", s.n);
		CHECK_STR(s.ids[0], "a1", "A's first");
		CHECK_STR(s.ids[1], "a2", "A's second");
		s.n = 0;
		chat_each(doc, "C", collect, &s);
		CHECK(s.n == 1, "C has %d items", s.n);
		CHECK_STR(s.ids[0], "s:c1", "C's status");
		CHECK(chat_senders(doc, who, 1) == 3, "count past max");
		cJSON_Delete(doc);
	}
	CHECK(chat_phone_digits("+1 (555) 010-2030", digits, sizeof(digits)),
	      "digits");
	CHECK_STR(digits, "15550102030", "digits");
	CHECK(!chat_phone_digits("n/a", digits, sizeof(digits)), "no digits");
	return check_done("test_chat");
}
