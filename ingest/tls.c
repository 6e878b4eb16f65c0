/* sluice-ingest's TLS: the server context built from the configured
 * certificate and key, at start and again on each SIGHUP.
 *
 * A reload builds a whole new context and the caller swaps it in for the
 * connections accepted from then on; a connection already open keeps the
 * context it started with (its SSL holds a reference), so rotating a
 * certificate drops nothing. A context that fails to build leaves the
 * running one in place. */
#include "tls.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/util.h"

/* TLS 1.2's suites: forward secrecy (ECDHE) and AEAD (AES-GCM,
 * ChaCha20-Poly1305) only, the choice of Mozilla's "intermediate" profile
 * minus finite-field DHE. TLS 1.3's are all AEAD: OpenSSL's default. */
#define TLS12_CIPHERS                                                          \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"           \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"           \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* OpenSSL's first error, as its reason alone ("no start line": the
 * cause, where the last would be "PEM lib": the caller), which
 * says more to an operator than its code; the queue is emptied. */
static const char *ssl_reason(void)
{
	unsigned long e = ERR_peek_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	ERR_clear_error();
	return r ? r : "unknown OpenSSL error";
}

/* The private key, through the secret reader's checks (a key that group
 * or others can read has already leaked to whoever they are, as ssh
 * says), read from the descriptor checked. */
static EVP_PKEY *key_load(const char *path, char *errstr, size_t errstr_size)
{
	char err[512];
	int fd = util_secret_open(path, err, sizeof(err));
	EVP_PKEY *key;
	FILE *f;

	if (fd < 0) {
		snprintf(errstr, errstr_size, "tls_key_file %s", err);
		return NULL;
	}
	f = fdopen(fd, "r");
	if (!f) {
		snprintf(errstr, errstr_size, "tls_key_file %s: %s", path,
			 strerror(errno));
		close(fd);
		return NULL;
	}
	key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (!key)
		snprintf(errstr, errstr_size,
			 "tls_key_file %s: no PEM private key: %s", path,
			 ssl_reason());
	return key;
}

SSL_CTX *tls_ctx_new(const char *cert_file, const char *key_file, char *errstr,
		     size_t errstr_size)
{
	static const unsigned char sid_ctx[] = "sluice-ingest";
	SSL_CTX *ctx = NULL;
	EVP_PKEY *key = NULL;

	ERR_clear_error();
	if (access(cert_file, R_OK) != 0) {
		snprintf(errstr, errstr_size, "tls_cert_file %s: %s", cert_file,
			 strerror(errno));
		return NULL;
	}
	key = key_load(key_file, errstr, errstr_size);
	if (!key)
		return NULL;
	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		snprintf(errstr, errstr_size, "SSL_CTX_new: %s", ssl_reason());
		goto fail;
	}
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
		snprintf(errstr, errstr_size, "TLS settings: %s", ssl_reason());
		goto fail;
	}
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE |
				     SSL_OP_NO_COMPRESSION |
				     SSL_OP_NO_RENEGOTIATION);
#ifdef SSL_OP_NO_CLIENT_RENEGOTIATION
	SSL_CTX_set_options(ctx, SSL_OP_NO_CLIENT_RENEGOTIATION);
#endif
	/* Sessions resume (tickets and the cache), a handshake a sender
	 * reconnecting often does not pay in full. */
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
		snprintf(errstr, errstr_size,
			 "tls_cert_file %s: no PEM certificate: %s", cert_file,
			 ssl_reason());
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(
		    errstr, errstr_size,
		    "tls_key_file %s does not match the certificate of tls_cert_file %s: %s",
		    key_file, cert_file, ssl_reason());
		goto fail;
	}
	EVP_PKEY_free(key);
	return ctx;
fail:
	EVP_PKEY_free(key);
	SSL_CTX_free(ctx);
	return NULL;
}

void tls_describe(SSL_CTX *ctx, char *buf, size_t size)
{
	X509 *x = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
	BIO *mem;
	BIGNUM *bn;
	char *serial = NULL, *until = NULL, subject[256];
	long n;

	if (!x) {
		snprintf(buf, size, "(no certificate)");
		return;
	}
	X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof(subject));
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	if (bn)
		serial = BN_bn2hex(bn);
	mem = BIO_new(BIO_s_mem());
	if (mem && ASN1_TIME_print(mem, X509_get0_notAfter(x)) == 1 &&
	    (n = BIO_get_mem_data(mem, &until)) > 0)
		snprintf(buf, size, "%s, serial %s, not after %.*s", subject,
			 serial ? serial : "?", (int)n, until);
	else
		snprintf(buf, size, "%s, serial %s", subject,
			 serial ? serial : "?");
	BIO_free(mem);
	OPENSSL_free(serial);
	BN_free(bn);
}

bool tls_same_cert(SSL_CTX *a, SSL_CTX *b)
{
	X509 *xa = a ? SSL_CTX_get0_certificate(a) : NULL;
	X509 *xb = b ? SSL_CTX_get0_certificate(b) : NULL;

	return xa && xb && X509_cmp(xa, xb) == 0;
}
