/* Standard Webhooks verification against vectors computed here with
 * OpenSSL's one-shot HMAC, independent of verify.c's streaming one. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>

#include "../../ingest/verify.h"
#include "check.h"

static void sign(const unsigned char *key, size_t klen, const char *id,
		 const char *ts, const char *body, char out[64])
{
	char msg[512];
	unsigned char mac[32];
	unsigned int len = 0;

	snprintf(msg, sizeof(msg), "%s.%s.%s", id, ts, body);
	HMAC(EVP_sha256(), key, (int)klen, (unsigned char *)msg, strlen(msg),
	     mac, &len);
	memcpy(out, "v1,", 3);
	EVP_EncodeBlock((unsigned char *)out + 3, mac, 32);
}

int main(void)
{
	const unsigned char key[] = "a secret key of some length!!";
	const size_t klen = sizeof(key) - 1;
	const char *body = "{\"conversation_id\":\"c1\"}";
	const long long now = 1700000000;
	char ts[32], old[32], good[64], other[64], both[160];

	CHECK(verify_setup(), "no HMAC");
	snprintf(ts, sizeof(ts), "%lld", now);
	snprintf(old, sizeof(old), "%lld", now - 301);
	sign(key, klen, "msg_1", ts, body, good);
	sign((const unsigned char *)"other", 5, "msg_1", ts, body, other);
	snprintf(both, sizeof(both), "%s %s", other, good);

	struct {
		const char *id, *ts, *sig, *body;
		enum verify_result want;
	} cases[] = {
	    {"msg_1", ts, good, body, VERIFY_OK},
	    {"msg_1", ts, both, body, VERIFY_OK},
	    {"msg_1", ts, other, body, VERIFY_MISMATCH},
	    {"msg_2", ts, good, body, VERIFY_MISMATCH},
	    {"msg_1", ts, good, "{\"conversation_id\":\"c2\"}",
	     VERIFY_MISMATCH},
	    {"msg_1", old, good, body, VERIFY_BAD_TIME},
	    {"msg_1", "soon", good, body, VERIFY_BAD_TIME},
	    {"msg_1", ts, "v2,abc", body, VERIFY_MISMATCH},
	    {NULL, ts, good, body, VERIFY_MISSING},
	    {"msg_1", ts, "", body, VERIFY_MISSING},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum verify_result r = verify_signature(
		    key, klen, cases[i].id, cases[i].ts, cases[i].sig,
		    cases[i].body, strlen(cases[i].body), now);

		CHECK(r == cases[i].want, "case %zu: got %d want %d", i, r,
		      cases[i].want);
	}
	{
		/* Meta's X-Hub-Signature-256; the value was computed with
		 * Python's hmac module, not with sluice's code. */
		static const char mbody[] = "{\"entry\":[]}";
		static const unsigned char mkey[] = "s3cret";
		const struct {
			const char *header;
			bool ok;
		} meta[] = {
		    {"sha256="
		     "55e94cedb4167d0e4e8c20f779a70292819e38da2afea51bf02dc6ecc"
		     "52542ba",
		     true},
		    {"sha256="
		     "55E94CEDB4167D0E4E8C20F779A70292819E38DA2AFEA51BF02DC6ECC"
		     "52542BA",
		     true},
		    {"sha1="
		     "55e94cedb4167d0e4e8c20f779a70292819e38da2afea51bf02dc6ecc"
		     "52542ba",
		     false},
		    {"55e94cedb4167d0e4e8c20f779a70292819e38da2afea51bf02dc6ecc"
		     "52542ba",
		     false},
		    {"sha256="
		     "05e94cedb4167d0e4e8c20f779a70292819e38da2afea51bf02dc6ecc"
		     "52542ba",
		     false},
		    {"sha256=", false},
		    {NULL, false},
		};

		for (size_t i = 0; i < sizeof(meta) / sizeof(meta[0]); i++)
			CHECK(verify_meta(mkey, 6, meta[i].header, mbody,
					  strlen(mbody)) == meta[i].ok,
			      "meta case %zu", i);
		CHECK(!verify_meta(mkey, 6, meta[0].header, "{\"entry\":[1]}",
				   14),
		      "a tampered body verified");
	}
	verify_cleanup();
	return check_done("test_verify");
}
