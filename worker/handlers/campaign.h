/* Campaign batches → the outbox (campaign_messages) and the run's counters
 * (campaign_runs); lead_updated events → the lead's cached context goes. */
#ifndef SLUICE_CAMPAIGN_HANDLER_H
#define SLUICE_CAMPAIGN_HANDLER_H

#include "handler.h"

extern const struct handler campaign_handler;
extern const struct handler lead_updated_handler;

#endif
