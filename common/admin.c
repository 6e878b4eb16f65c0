/* Who may call the status and admin routes, the log-level body, and the
 * effective configuration as JSON: shared by both daemons. */
#include "admin.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

bool admin_token_load(const char *path, char **token, char *errstr,
		      size_t errstr_size)
{
	char err[512];
	char *t = util_read_secret(path, err, sizeof(err));

	*token = NULL;
	if (!t) {
		snprintf(errstr, errstr_size, "admin_token_file %s", err);
		return false;
	}
	*token = t;
	return true;
}

bool admin_peer_loopback(const struct sockaddr *sa)
{
	if (!sa)
		return false;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		const uint8_t *a = in6->sin6_addr.s6_addr;

		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && a[12] == 127;
	}
	return false;
}

const char *admin_authorize(const struct sockaddr *peer,
			    const char *authorization, const char *token)
{
	unsigned char got[SHA256_DIGEST_LENGTH], want[SHA256_DIGEST_LENGTH];
	const char *t;

	if (!authorization)
		return admin_peer_loopback(peer) ? NULL
						 : "admin_token_required";
	/* A header that is present must be right, from loopback too: a
	 * client sending a stale token should find out. */
	if (!token || strncasecmp(authorization, "Bearer ", 7) != 0)
		return "admin_token_invalid";
	for (t = authorization + 7; *t == ' '; t++)
		;
	SHA256((const unsigned char *)t, strlen(t), got);
	SHA256((const unsigned char *)token, strlen(token), want);
	return CRYPTO_memcmp(got, want, sizeof(got)) == 0
		   ? NULL
		   : "admin_token_invalid";
}

int admin_parse_level(const char *body, size_t len)
{
	char word[16];
	size_t n;
	int level = -1;

	while (len > 0 && isspace((unsigned char)*body)) {
		body++;
		len--;
	}
	while (len > 0 && isspace((unsigned char)body[len - 1]))
		len--;
	if (len > 0 && body[0] == '{') {
		cJSON *doc = cJSON_ParseWithLength(body, len);
		const cJSON *l = cJSON_GetObjectItemCaseSensitive(doc, "level");

		if (cJSON_IsString(l))
			for (int i = 0; log_level_names[i]; i++)
				if (strcmp(l->valuestring,
					   log_level_names[i]) == 0)
					level = i;
		cJSON_Delete(doc);
		return level;
	}
	n = len < sizeof(word) - 1 ? len : sizeof(word) - 1;
	if (n != len)
		return -1;
	memcpy(word, body, n);
	word[n] = '\0';
	for (int i = 0; log_level_names[i]; i++)
		if (strcmp(word, log_level_names[i]) == 0)
			level = i;
	return level;
}

cJSON *admin_config_json(const struct cfg_setting *table, const void *target,
			 const struct cfg_kv *kv)
{
	cJSON *o = cJSON_CreateObject();
	char text[4096], shown[4096];

	for (const struct cfg_setting *s = table; s->key; s++) {
		const char *field = (const char *)target + s->offset;
		cJSON *e = cJSON_AddObjectToObject(o, s->key);

		if (s->type == CFG_INT) {
			cJSON_AddNumberToObject(
			    e, "value", *(const int *)(const void *)field);
		} else {
			cfg_value_text(s, target, text, sizeof(text));
			cJSON_AddStringToObject(e, "value",
						cfg_value_shown(s->key, text,
								shown,
								sizeof(shown)));
		}
		cJSON_AddBoolToObject(e, "runtime", s->runtime);
	}
	/* Pass-through keys (kafka.*): the client is built once, at start. */
	for (; kv; kv = kv->next) {
		cJSON *e = cJSON_CreateObject();

		cJSON_AddStringToObject(
		    e, "value",
		    cfg_value_shown(kv->key, kv->value, shown, sizeof(shown)));
		cJSON_AddBoolToObject(e, "runtime", false);
		/* The last of a repeated key is the one in force. */
		cJSON_DeleteItemFromObjectCaseSensitive(o, kv->key);
		cJSON_AddItemToObject(o, kv->key, e);
	}
	return o;
}
