/* sluice-ingest's TLS: the server context built from the configured
 * certificate and key (at start and on each SIGHUP). */
#ifndef SLUICE_INGEST_TLS_H
#define SLUICE_INGEST_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

/* A server SSL_CTX for cert_file (PEM, the chain after the leaf) and
 * key_file (PEM, mode 0600 or stricter): TLS 1.2 and 1.3 only, ECDHE with
 * AEAD ciphers, the server's preference, no compression, no
 * renegotiation. NULL with errstr saying why (a key file readable by
 * group or others is refused). The caller frees it with SSL_CTX_free;
 * each connection's SSL holds its own reference. */
SSL_CTX *tls_ctx_new(const char *cert_file, const char *key_file, char *errstr,
		     size_t errstr_size) __attribute__((warn_unused_result));
/* "subject CN=..., serial ..., not after ..." of the context's
 * certificate, for the log. */
void tls_describe(SSL_CTX *ctx, char *buf, size_t size);
/* Whether two contexts serve the same certificate. */
bool tls_same_cert(SSL_CTX *a, SSL_CTX *b);

#endif
