/* Standard Webhooks signature verification (HMAC-SHA256, constant time). */
#include "verify.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

static EVP_MAC *hmac;

bool verify_setup(void)
{
	hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	return hmac != NULL;
}

void verify_cleanup(void)
{
	EVP_MAC_free(hmac);
	hmac = NULL;
}

const char *verify_result_str(enum verify_result r)
{
	switch (r) {
	case VERIFY_OK: return "ok";
	case VERIFY_MISSING:
		return "webhook-id, webhook-timestamp and webhook-signature "
		       "headers are required";
	case VERIFY_BAD_TIME:
		return "webhook-timestamp is invalid or outside the 5 minute "
		       "tolerance";
	case VERIFY_MISMATCH: return "no webhook-signature matches";
	}
	return "?";
}

/* HMAC-SHA256 of "id.ts.body", or of the body alone when id is NULL. */
static bool compute(const unsigned char *key, size_t key_len, const char *id,
		    const char *ts, const void *body, size_t body_len,
		    unsigned char out[32])
{
	OSSL_PARAM params[2];
	EVP_MAC_CTX *ctx;
	size_t outlen = 0;
	bool ok;

	if (!hmac)
		return false;
	ctx = EVP_MAC_CTX_new(hmac);
	if (!ctx)
		return false;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
						     (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	ok =
	    EVP_MAC_init(ctx, key, key_len, params) == 1 &&
	    (!id ||
	     (EVP_MAC_update(ctx, (const unsigned char *)id, strlen(id)) == 1 &&
	      EVP_MAC_update(ctx, (const unsigned char *)".", 1) == 1 &&
	      EVP_MAC_update(ctx, (const unsigned char *)ts, strlen(ts)) == 1 &&
	      EVP_MAC_update(ctx, (const unsigned char *)".", 1) == 1)) &&
	    EVP_MAC_update(ctx, body, body_len) == 1 &&
	    EVP_MAC_final(ctx, out, &outlen, 32) == 1 && outlen == 32;
	EVP_MAC_CTX_free(ctx);
	return ok;
}

enum verify_result verify_signature(const unsigned char *key, size_t key_len,
				    const char *id, const char *timestamp,
				    const char *sigs, const void *body,
				    size_t body_len, int64_t now_s)
{
	unsigned char mac[32];
	char expected[45]; /* base64 of 32 bytes is 44 characters */
	const char *p;
	char *end;
	long long ts;
	bool match = false;

	if (!id || !*id || !timestamp || !*timestamp || !sigs || !*sigs)
		return VERIFY_MISSING;
	errno = 0;
	ts = strtoll(timestamp, &end, 10);
	if (errno || end == timestamp || *end != '\0' ||
	    llabs(now_s - ts) > VERIFY_TOLERANCE_S)
		return VERIFY_BAD_TIME;
	if (!compute(key, key_len, id, timestamp, body, body_len, mac))
		return VERIFY_MISMATCH;
	EVP_EncodeBlock((unsigned char *)expected, mac, sizeof(mac));

	/* Every candidate is compared in full, so the time taken does not
	 * tell which one (or which byte) was close. */
	p = sigs;
	while (*p) {
		const char *tok_end;
		size_t len;

		while (*p == ' ')
			p++;
		tok_end = p;
		while (*tok_end && *tok_end != ' ')
			tok_end++;
		len = (size_t)(tok_end - p);
		if (len == 3 + 44 && memcmp(p, "v1,", 3) == 0 &&
		    CRYPTO_memcmp(p + 3, expected, 44) == 0)
			match = true;
		p = tok_end;
	}
	OPENSSL_cleanse(mac, sizeof(mac));
	return match ? VERIFY_OK : VERIFY_MISMATCH;
}

bool verify_meta(const unsigned char *key, size_t key_len, const char *header,
		 const void *body, size_t body_len)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char mac[32];
	char expected[64], got[64];

	if (!header || strncmp(header, "sha256=", 7) != 0 ||
	    strlen(header + 7) != 64)
		return false;
	/* Lower-case what was sent, so a sender's upper-case hex matches;
	 * the comparison itself takes constant time. */
	for (int i = 0; i < 64; i++) {
		char ch = header[7 + i];

		got[i] = (char)(ch >= 'A' && ch <= 'F' ? ch - 'A' + 'a' : ch);
	}
	if (!compute(key, key_len, NULL, NULL, body, body_len, mac))
		return false;
	for (int i = 0; i < 32; i++) {
		expected[2 * i] = hex[mac[i] >> 4];
		expected[2 * i + 1] = hex[mac[i] & 15];
	}
	return CRYPTO_memcmp(expected, got, 64) == 0;
}
