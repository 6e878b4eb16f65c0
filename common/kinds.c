/* The table of record kinds. Adding a kind: its row here (the check in
 * common/<kind>.c), its handler's row in worker/handlers/handler.c. */
#include "kinds.h"

#include <string.h>

#include "campaign.h"
#include "chat.h"
#include "validate.h"

const struct kind *const kinds[] = {
    &transcript_kind, &campaign_kind, &lead_updated_kind, &chat_kind, NULL,
};

const struct kind *kind_find(const char *name)
{
	for (int i = 0; kinds[i]; i++)
		if (strcmp(kinds[i]->name, name) == 0)
			return kinds[i];
	return NULL;
}

void kind_names(char *out, size_t size)
{
	size_t n = 0;

	out[0] = '\0';
	for (int i = 0; kinds[i] && n < size; i++)
		n += (size_t)snprintf(out + n, size - n, "%s%s", i ? ", " : "",
				      kinds[i]->name);
}
