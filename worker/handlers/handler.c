/* The table that maps a record's kind to its handler. Each kind is named
 * once, in common/kinds.h; a kind's row there and its row here are what
 * adding a kind takes, besides its code. */
#include "handler.h"

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
