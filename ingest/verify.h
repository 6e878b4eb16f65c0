/* Webhook signature verification (HMAC-SHA256, constant time): Standard
 * Webhooks, and Meta's X-Hub-Signature-256. */
#ifndef SLUICE_VERIFY_H
#define SLUICE_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VERIFY_TOLERANCE_S 300

enum verify_result {
	VERIFY_OK = 0,
	VERIFY_MISSING,	 /* a webhook-* header is absent */
	VERIFY_BAD_TIME, /* timestamp unparsable or outside the tolerance */
	VERIFY_MISMATCH, /* no signature matches */
};

bool verify_setup(void) __attribute__((warn_unused_result));
void verify_cleanup(void);
/* sigs is the webhook-signature header: space-separated "v1,<base64>". */
enum verify_result verify_signature(const unsigned char *key, size_t key_len,
				    const char *id, const char *timestamp,
				    const char *sigs, const void *body,
				    size_t body_len, int64_t now_s);
const char *verify_result_str(enum verify_result r);

/* Meta's scheme: header "sha256=<hex HMAC-SHA256 of the raw body>" keyed
 * with the app secret. */
bool verify_meta(const unsigned char *key, size_t key_len, const char *header,
		 const void *body, size_t body_len)
    __attribute__((warn_unused_result));

#endif
