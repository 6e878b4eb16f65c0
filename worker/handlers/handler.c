/* The table that maps a record's kind to its handler. */
#include "handler.h"

#include <string.h>

#include "campaign.h"
#include "chat.h"
#include "transcript.h"

const struct handler *const handlers[] = {
    &transcript_handler,
    &campaign_handler,
    &lead_updated_handler,
    &chat_handler,
    NULL,
};

const struct handler *handler_find(const char *kind)
{
	for (int i = 0; handlers[i]; i++)
		if (strcmp(handlers[i]->kind, kind) == 0)
			return handlers[i];
	return NULL;
}
