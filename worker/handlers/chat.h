/* Inbound chat (WhatsApp Business Cloud API webhooks) → chat_messages,
 * chat_statuses and the turns an agent claims (chat_turns). */
#ifndef SLUICE_CHAT_HANDLER_H
#define SLUICE_CHAT_HANDLER_H

#include "handler.h"

extern const struct handler chat_handler;

#endif
