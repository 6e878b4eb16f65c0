/* PostgreSQL side of the worker: one transaction per batch holding the rows
 * and the consumed offsets, and the COPY / statement helpers the handlers
 * write their rows with. */
#ifndef SLUICE_PGSINK_H
#define SLUICE_PGSINK_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

struct pgsink;

/* staging_sql runs on every new connection (the handlers' temp tables). */
struct pgsink *pgsink_new(const char *dsn, const char *group_id,
			  const char *topic, const char *staging_sql);
void pgsink_destroy(struct pgsink *ps);
/* idle_in_transaction_session_timeout of the sessions opened from now on
 * (0 = the server's default). */
void pgsink_set_idle_tx_timeout(struct pgsink *ps, int ms);
/* The group and topic whose offsets it keeps. */
const char *pgsink_group_id(const struct pgsink *ps);
const char *pgsink_topic(const struct pgsink *ps);
/* (Re)connects when needed; false while the database is unreachable. */
bool pgsink_connect(struct pgsink *ps, char *errstr, size_t errstr_size);

/* next_offset of each partition, -1 where none is stored: what this
 * session's last commit stored when it covered every one of them and
 * nothing was rolled back or (re)assigned since (a first guess that
 * pgsink_begin()'s fence confirms), else read from the table. */
bool pgsink_load_offsets(struct pgsink *ps, const int32_t *parts, int n,
			 int64_t *out, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* Where consumption starts: the stored offsets, and for a partition
 * without one, start_group's (pgsink_set_start_group()): a pipeline of
 * its own for a kind takes over where the worker's shared pipeline
 * stopped, instead of reading the topic again from its start. */
void pgsink_set_start_group(struct pgsink *ps, const char *group);
bool pgsink_load_start(struct pgsink *ps, const int32_t *parts, int n,
		       int64_t *out, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* BEGIN, then lock the offsets rows of the batch's partitions and return
 * what is stored (-1 for none): records below it were applied already. */
bool pgsink_begin(struct pgsink *ps, const int32_t *parts, int n,
		  int64_t *fence, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* Inside the transaction. COPY rows into a table. For a COPY in the
 * binary format (the statement says FORMAT binary), b holds whole tuples
 * only: pgsink sends the header before them and the trailer after. */
bool pgsink_copy(struct pgsink *ps, const char *sql, const struct buf *b,
		 char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
/* The same, all or nothing under a savepoint, for a fast path that a
 * unique key can refuse: PGSINK_CONFLICT = a row broke a unique
 * constraint, the savepoint was rolled back and the transaction goes on
 * as if the COPY had not run; PGSINK_FAILED = errstr, the transaction is
 * lost. */
enum pgsink_copy_result { PGSINK_COPIED, PGSINK_CONFLICT, PGSINK_FAILED };
enum pgsink_copy_result pgsink_copy_unique(struct pgsink *ps, const char *sql,
					   const struct buf *b, char *errstr,
					   size_t errstr_size)
    __attribute__((warn_unused_result));
/* The same, sent in chunks while the rows are still being built: begin
 * (the savepoint), chunks, end. Each chunk is a COPY of its own that
 * ends once its rows are sent and is answered while the next chunk is
 * built, so the server works on the rows meanwhile; in between the
 * session is idle in its transaction, and
 * idle_in_transaction_session_timeout still ends the transaction of a
 * worker stopped while building (a COPY left open would count as a
 * running statement). After a refused chunk the rest are not sent.
 * Nothing else runs on the connection until pgsink_stream_end();
 * pgsink_rollback() ends a stream too. false / PGSINK_FAILED = errstr,
 * the transaction is lost. */
bool pgsink_stream_begin(struct pgsink *ps, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
bool pgsink_stream_chunk(struct pgsink *ps, const char *sql, const char *data,
			 size_t len, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
enum pgsink_copy_result pgsink_stream_end(struct pgsink *ps, char *errstr,
					  size_t errstr_size)
    __attribute__((warn_unused_result));
/* A statement's affected rows, or -1 (errstr). */
long long pgsink_exec(struct pgsink *ps, const char *sql, int nparams,
		      const char *const *params, const char *what, char *errstr,
		      size_t errstr_size) __attribute__((warn_unused_result));
/* A query's rows (PQclear it), or NULL (errstr). */
PGresult *pgsink_query(struct pgsink *ps, const char *sql, int nparams,
		       const char *const *params, const char *what,
		       char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* Whether the last statement refused was refused for its data (SQLSTATE
 * classes 22 and 23), which trying again cannot fix; cleared by
 * pgsink_clear_error(). */
bool pgsink_data_error(const struct pgsink *ps);
void pgsink_clear_error(struct pgsink *ps);

/* A dry run (replay --dry-run): pgsink_commit() rolls back instead, so
 * the handlers' statements report what they would change. */
void pgsink_set_dry_run(struct pgsink *ps, bool dry_run);

/* Stores the offsets (never below what is stored already: a batch whose
 * records were all applied by a later owner must not move them back),
 * then COMMITs; rolls back on failure. */
bool pgsink_commit(struct pgsink *ps, const int32_t *parts,
		   const int64_t *next_offsets, int n, char *errstr,
		   size_t errstr_size) __attribute__((warn_unused_result));
void pgsink_rollback(struct pgsink *ps);

#endif
