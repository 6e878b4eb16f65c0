/* PostgreSQL side of the worker: one transaction per batch holding the rows
 * and the consumed offsets. */
#include "pgsink.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"

struct pgsink {
	PGconn *conn;
	char *dsn;
	char *group_id;
	char *topic;
	char *staging_sql; /* every handler's temp tables */
	char *start_group; /* pgsink_set_start_group() */
	int idle_tx_timeout_ms;
	bool prepared;
	bool dry_run;
	bool copying;	      /* a COPY is open */
	bool copy_binary;     /* in the binary format: framed by pgsink */
	bool pending;	      /* a COPY ended; its result is not read yet */
	char stream_state[6]; /* the SQLSTATE that refused a chunk, or "" */
	char last_state[6];   /* of the last statement refused, or "" */
	char stream_err[256];
	/* The partitions' stored offsets as this session's last commit left
	 * them, so the next batch's read before its lookups (step 1) costs
	 * no round trip. Only a first guess: the fence read under the locks
	 * decides, and any difference rolls back, which forgets them all. */
	int32_t *known_part;
	int64_t *known_next;
	int n_known, cap_known;
	/* What pgsink_begin() read under the locks, for the commit. */
	int32_t *locked_part;
	int64_t *locked_next;
	int n_locked, cap_locked;
};

static const char SQL_LOAD_OFFSETS[] =
    "SELECT partition, next_offset FROM sluice_offsets"
    " WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int[])";

/* A partition's first batch has no row to lock: -1 (nothing stored)
 * placeholders make one, so two owners of a partition serialize on it even
 * then. The batch's upsert replaces it; a rollback removes it. Rows are
 * taken in partition order so two batches never wait on each other in a
 * cycle. */
static const char SQL_CLAIM[] =
    "INSERT INTO sluice_offsets (group_id, topic, partition, next_offset)"
    " SELECT $1, $2, p, -1 FROM unnest($3::int[]) AS u(p) ORDER BY p"
    " ON CONFLICT (group_id, topic, partition) DO NOTHING";

static const char SQL_FENCE[] =
    "SELECT partition, next_offset FROM sluice_offsets"
    " WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int[])"
    " ORDER BY partition FOR UPDATE";

static const char SQL_OFFSETS[] =
    "INSERT INTO sluice_offsets (group_id, topic, partition, next_offset)"
    " SELECT $1, $2, p, o FROM unnest($3::int[], $4::bigint[]) AS u(p, o)"
    " ON CONFLICT (group_id, topic, partition) DO UPDATE"
    " SET next_offset = GREATEST(sluice_offsets.next_offset,"
    " EXCLUDED.next_offset), updated_at = now()";

/* A batch's transaction is open only while it writes, so it is never idle
 * for long unless its worker is stopped or cut off; the server then ends
 * it, and the partitions' next owner is not blocked behind its row locks
 * (docs/operations.md, "Zombie workers"). */
static const char SQL_IDLE_TIMEOUT[] =
    "SELECT set_config('idle_in_transaction_session_timeout', $1, false)";

struct pgsink *pgsink_new(const char *dsn, const char *group_id,
			  const char *topic, const char *staging_sql)
{
	struct pgsink *ps = xcalloc(1, sizeof(*ps));

	if (!ps)
		abort();
	ps->staging_sql = xstrdup(staging_sql);
	ps->dsn = xstrdup(dsn);
	ps->group_id = xstrdup(group_id);
	ps->topic = xstrdup(topic);
	return ps;
}

void pgsink_destroy(struct pgsink *ps)
{
	if (!ps)
		return;
	if (ps->conn)
		PQfinish(ps->conn);
	free(ps->dsn);
	free(ps->group_id);
	free(ps->topic);
	free(ps->staging_sql);
	free(ps->start_group);
	free(ps->known_part);
	free(ps->known_next);
	free(ps->locked_part);
	free(ps->locked_next);
	free(ps);
}

static void known_forget(struct pgsink *ps)
{
	ps->n_known = 0;
	ps->n_locked = 0;
}

static int known_index(const struct pgsink *ps, int32_t part)
{
	for (int i = 0; i < ps->n_known; i++)
		if (ps->known_part[i] == part)
			return i;
	return -1;
}

/* After a commit: the offset stored now is the greater of the one locked
 * and the one written (the upsert keeps the greatest). */
static void known_committed(struct pgsink *ps, const int32_t *parts,
			    const int64_t *next_offsets, int n)
{
	for (int i = 0; i < n; i++) {
		int64_t v = next_offsets[i];
		int k;

		for (int j = 0; j < ps->n_locked; j++)
			if (ps->locked_part[j] == parts[i] &&
			    ps->locked_next[j] > v)
				v = ps->locked_next[j];
		k = known_index(ps, parts[i]);
		if (k < 0) {
			if (ps->n_known == ps->cap_known) {
				ps->cap_known =
				    ps->cap_known ? 2 * ps->cap_known : 16;
				ps->known_part =
				    xrealloc(ps->known_part,
					     (size_t)ps->cap_known *
						 sizeof(*ps->known_part));
				ps->known_next =
				    xrealloc(ps->known_next,
					     (size_t)ps->cap_known *
						 sizeof(*ps->known_next));
			}
			k = ps->n_known++;
			ps->known_part[k] = parts[i];
		}
		ps->known_next[k] = v;
	}
	ps->n_locked = 0;
}

const char *pgsink_group_id(const struct pgsink *ps)
{
	return ps->group_id;
}

const char *pgsink_topic(const struct pgsink *ps)
{
	return ps->topic;
}

/* Keeps the SQLSTATE of a refused statement for pgsink_data_error(). */
static void note_state(struct pgsink *ps, const PGresult *res)
{
	const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	snprintf(ps->last_state, sizeof(ps->last_state), "%s", s ? s : "");
}

static void set_err(struct pgsink *ps, const char *what, char *errstr,
		    size_t errstr_size)
{
	const char *msg = ps->conn ? PQerrorMessage(ps->conn) : "no connection";

	snprintf(errstr, errstr_size, "%s: %.*s", what, (int)strcspn(msg, "\n"),
		 msg);
}

static void drop_conn(struct pgsink *ps)
{
	if (ps->conn)
		PQfinish(ps->conn);
	ps->conn = NULL;
	known_forget(ps);
	ps->prepared = false;
	ps->copying = false;
	ps->pending = false;
}

bool pgsink_connect(struct pgsink *ps, char *errstr, size_t errstr_size)
{
	PGresult *res;

	if (ps->conn && PQstatus(ps->conn) == CONNECTION_OK && ps->prepared)
		return true;
	drop_conn(ps);
	ps->conn = PQconnectdb(ps->dsn);
	if (PQstatus(ps->conn) != CONNECTION_OK) {
		set_err(ps, "connect", errstr, errstr_size);
		drop_conn(ps);
		return false;
	}
	res = PQexec(ps->conn, ps->staging_sql);
	if (ps->staging_sql[0] && PQresultStatus(res) != PGRES_COMMAND_OK) {
		PQclear(res);
		set_err(ps, "staging tables", errstr, errstr_size);
		drop_conn(ps);
		return false;
	}
	PQclear(res);
	if (ps->idle_tx_timeout_ms > 0) {
		char ms[32];
		const char *params[1] = {ms};

		snprintf(ms, sizeof(ms), "%d", ps->idle_tx_timeout_ms);
		res = PQexecParams(ps->conn, SQL_IDLE_TIMEOUT, 1, NULL, params,
				   NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			PQclear(res);
			set_err(ps, "idle_in_transaction_session_timeout",
				errstr, errstr_size);
			drop_conn(ps);
			return false;
		}
		PQclear(res);
	}
	ps->prepared = true;
	return true;
}

void pgsink_set_idle_tx_timeout(struct pgsink *ps, int ms)
{
	ps->idle_tx_timeout_ms = ms;
}

/* "{1,2,3}" */
static char *int_array(const int32_t *v, int n)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "{");
	for (int i = 0; i < n; i++)
		buf_printf(&b, "%s%d", i ? "," : "", v[i]);
	buf_puts(&b, "}");
	return b.data;
}

static char *bigint_array(const int64_t *v, int n)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "{");
	for (int i = 0; i < n; i++)
		buf_printf(&b, "%s%lld", i ? "," : "", (long long)v[i]);
	buf_puts(&b, "}");
	return b.data;
}

/* (partition, next_offset) rows into out, in the order of parts; -1 for a
 * partition without a row (or without res). */
static void offsets_read(const PGresult *res, const int32_t *parts, int n,
			 int64_t *out)
{
	for (int i = 0; i < n; i++)
		out[i] = -1;
	for (int r = 0; res && r < PQntuples(res); r++) {
		int32_t p = (int32_t)atoi(PQgetvalue(res, r, 0));
		int64_t o = atoll(PQgetvalue(res, r, 1));

		for (int i = 0; i < n; i++)
			if (parts[i] == p)
				out[i] = o;
	}
}

/* One statement of a pipeline_run(). */
struct pq_step {
	const char *sql;
	int nparams;
	const char *const *params;
	ExecStatusType want;
	PGresult **keep; /* its result, the caller's to PQclear(); or NULL */
};

/* Sends the statements at once in libpq's pipeline mode and reads their
 * results: one round trip instead of one per statement, which on a busy
 * box is also one wake-up of the server and of this thread instead of
 * several. Like a run of PQexecParams(): the first refusal is kept (its
 * SQLSTATE for pgsink_data_error(), its message in errstr) and the server
 * skips the rest (PGRES_PIPELINE_ABORTED) up to the sync; an open
 * transaction is then in its failed state, for pgsink_rollback(). A
 * connection that fails or answers out of turn is dropped, which rolls
 * back whatever it had open. */
static bool pipeline_run(struct pgsink *ps, const struct pq_step *steps, int n,
			 const char *what, char *errstr, size_t errstr_size)
{
	PGconn *c = ps->conn;
	PGresult *res;
	bool ok = true;

	for (int i = 0; i < n; i++)
		if (steps[i].keep)
			*steps[i].keep = NULL;
	if (PQenterPipelineMode(c) != 1)
		goto broken;
	for (int i = 0; i < n; i++)
		if (PQsendQueryParams(c, steps[i].sql, steps[i].nparams, NULL,
				      steps[i].params, NULL, NULL, 0) != 1)
			goto broken;
	if (PQpipelineSync(c) != 1)
		goto broken;
	for (int i = 0; i < n; i++) {
		res = PQgetResult(c);
		if (!res)
			goto broken;
		if (ok && PQresultStatus(res) != steps[i].want) {
			const char *msg = PQresultErrorMessage(res);

			ok = false;
			note_state(ps, res);
			snprintf(errstr, errstr_size, "%s: %.*s", what,
				 (int)strcspn(msg, "\n"), msg);
		}
		if (ok && steps[i].keep)
			*steps[i].keep = res;
		else
			PQclear(res);
		if ((res = PQgetResult(c)) != NULL) { /* the step's end */
			PQclear(res);
			goto broken;
		}
	}
	res = PQgetResult(c);
	if (PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
		PQclear(res);
		goto broken;
	}
	PQclear(res);
	if (PQexitPipelineMode(c) != 1)
		goto broken;
	return ok;
broken:
	if (ok)
		set_err(ps, what, errstr, errstr_size);
	for (int i = 0; i < n; i++)
		if (steps[i].keep) {
			PQclear(*steps[i].keep);
			*steps[i].keep = NULL;
		}
	drop_conn(ps);
	return false;
}

static bool query_offsets(struct pgsink *ps, const char *sql,
			  const int32_t *parts, int n, int64_t *out,
			  char *errstr, size_t errstr_size)
{
	char *arr = int_array(parts, n);
	const char *params[3] = {ps->group_id, ps->topic, arr};
	PGresult *res;
	bool ok;

	res = PQexecParams(ps->conn, sql, 3, NULL, params, NULL, NULL, 0);
	free(arr);
	ok = PQresultStatus(res) == PGRES_TUPLES_OK;
	if (!ok) {
		note_state(ps, res);
		set_err(ps, "offsets", errstr, errstr_size);
	}
	offsets_read(ok ? res : NULL, parts, n, out);
	PQclear(res);
	return ok;
}

bool pgsink_load_offsets(struct pgsink *ps, const int32_t *parts, int n,
			 int64_t *out, char *errstr, size_t errstr_size)
{
	int i;

	if (!pgsink_connect(ps, errstr, errstr_size))
		return false;
	for (i = 0; i < n; i++) {
		int k = known_index(ps, parts[i]);

		if (k < 0)
			break;
		out[i] = ps->known_next[k];
	}
	if (i == n)
		return true;
	if (query_offsets(ps, SQL_LOAD_OFFSETS, parts, n, out, errstr,
			  errstr_size))
		return true;
	drop_conn(ps);
	return false;
}

void pgsink_set_start_group(struct pgsink *ps, const char *group)
{
	free(ps->start_group);
	ps->start_group = group ? xstrdup(group) : NULL;
}

bool pgsink_load_start(struct pgsink *ps, const int32_t *parts, int n,
		       int64_t *out, char *errstr, size_t errstr_size)
{
	int64_t *other;
	char *own;
	bool missing = false, ok;

	/* Partitions (re)assigned: an earlier owner may have moved them. */
	known_forget(ps);
	if (!pgsink_load_offsets(ps, parts, n, out, errstr, errstr_size))
		return false;
	for (int i = 0; i < n; i++)
		missing |= out[i] < 0;
	if (!missing || !ps->start_group)
		return true;
	other = xcalloc((size_t)n + 1, sizeof(*other));
	/* The same query under the other group's name. */
	own = ps->group_id;
	ps->group_id = ps->start_group;
	ok = query_offsets(ps, SQL_LOAD_OFFSETS, parts, n, other, errstr,
			   errstr_size);
	ps->group_id = own;
	if (!ok)
		drop_conn(ps);
	for (int i = 0; ok && i < n; i++)
		if (out[i] < 0)
			out[i] = other[i];
	free(other);
	return ok;
}

static bool exec_ok(struct pgsink *ps, const char *sql, const char *what,
		    char *errstr, size_t errstr_size)
{
	PGresult *res = PQexec(ps->conn, sql);
	bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;

	if (!ok) {
		note_state(ps, res);
		set_err(ps, what, errstr, errstr_size);
	}
	PQclear(res);
	return ok;
}

bool pgsink_begin(struct pgsink *ps, const int32_t *parts, int n,
		  int64_t *fence, char *errstr, size_t errstr_size)
{
	char *arr;
	const char *params[3];
	PGresult *res = NULL;
	bool ok;

	if (!pgsink_connect(ps, errstr, errstr_size))
		return false;
	arr = int_array(parts, n);
	params[0] = ps->group_id;
	params[1] = ps->topic;
	params[2] = arr;
	{
		/* BEGIN, the placeholders and the fence in one round trip:
		 * the server runs them in order, so the fence is still read
		 * under the locks its own SELECT ... FOR UPDATE takes. */
		const struct pq_step steps[] = {
		    {"BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL},
		    {SQL_CLAIM, 3, params, PGRES_COMMAND_OK, NULL},
		    {SQL_FENCE, 3, params, PGRES_TUPLES_OK, &res},
		};

		ok = pipeline_run(ps, steps, 3, "offsets", errstr, errstr_size);
	}
	free(arr);
	offsets_read(res, parts, n, fence);
	PQclear(res);
	if (ok) {
		if (n > ps->cap_locked) {
			ps->cap_locked = n;
			ps->locked_part = xrealloc(ps->locked_part,
						   (size_t)n * sizeof(*parts));
			ps->locked_next = xrealloc(ps->locked_next,
						   (size_t)n * sizeof(*fence));
		}
		memcpy(ps->locked_part, parts, (size_t)n * sizeof(*parts));
		memcpy(ps->locked_next, fence, (size_t)n * sizeof(*fence));
		ps->n_locked = n;
	}
	if (!ok)
		pgsink_rollback(ps);
	return ok;
}

/* A COPY in the binary format opens with this header (signature, no
 * flags, no extension) and ends with a field count of -1; the caller's
 * buffer holds only the tuples, so that any run of whole tuples can be a
 * COPY of its own. Sent without the literals' terminating NUL. */
static const char COPY_BINARY_HEADER[] = "PGCOPY\n\377\r\n\0"
					 "\0\0\0\0"
					 "\0\0\0\0";
static const char COPY_BINARY_TRAILER[] = "\377\377";

static bool copy_open(struct pgsink *ps, const char *sql, char *errstr,
		      size_t errstr_size)
{
	PGresult *res = PQexec(ps->conn, sql);

	if (PQresultStatus(res) != PGRES_COPY_IN) {
		note_state(ps, res);
		PQclear(res);
		set_err(ps, "copy", errstr, errstr_size);
		return false;
	}
	ps->copy_binary = PQbinaryTuples(res) == 1;
	PQclear(res);
	ps->copying = true;
	if (ps->copy_binary &&
	    PQputCopyData(ps->conn, COPY_BINARY_HEADER,
			  (int)sizeof(COPY_BINARY_HEADER) - 1) != 1) {
		set_err(ps, "copy", errstr, errstr_size);
		return false;
	}
	return true;
}

/* PQputCopyData takes an int: larger rows go in pieces. */
static bool copy_put(struct pgsink *ps, const char *data, size_t len,
		     char *errstr, size_t errstr_size)
{
	enum { PIECE = 1 << 20 };

	while (len > 0) {
		size_t n = len < PIECE ? len : PIECE;

		if (PQputCopyData(ps->conn, data, (int)n) != 1) {
			set_err(ps, "copy", errstr, errstr_size);
			return false;
		}
		data += n;
		len -= n;
	}
	return true;
}

/* Ends the open COPY (abandon: error it out); its result is pending. A
 * COPY that cannot be ended may still be open on the wire, where nothing
 * else can run: the connection is dropped (the transaction with it). */
static bool copy_end(struct pgsink *ps, const char *abandon, char *errstr,
		     size_t errstr_size)
{
	bool ok = (abandon || !ps->copy_binary ||
		   PQputCopyData(ps->conn, COPY_BINARY_TRAILER,
				 (int)sizeof(COPY_BINARY_TRAILER) - 1) == 1) &&
		  PQputCopyEnd(ps->conn, abandon) == 1;

	ps->copying = false;
	if (ok) {
		ps->pending = true;
		return true;
	}
	set_err(ps, "copy", errstr, errstr_size);
	drop_conn(ps);
	return false;
}

/* The pending COPY's result; state gets the SQLSTATE of a refusal (""
 * when it worked or the connection failed). */
static bool copy_result(struct pgsink *ps, char state[6], char *errstr,
			size_t errstr_size)
{
	PGresult *res = PQgetResult(ps->conn);
	bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;

	state[0] = '\0';
	ps->pending = false;
	if (!ok) {
		const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		if (s)
			snprintf(state, 6, "%s", s);
		note_state(ps, res);
		set_err(ps, "copy", errstr, errstr_size);
	}
	PQclear(res);
	/* Drain anything left so the connection is ready for the next
	 * command. */
	while ((res = PQgetResult(ps->conn)) != NULL)
		PQclear(res);
	return ok;
}

bool pgsink_copy(struct pgsink *ps, const char *sql, const struct buf *b,
		 char *errstr, size_t errstr_size)
{
	char state[6];

	return b->len == 0 ||
	       (copy_open(ps, sql, errstr, errstr_size) &&
		copy_put(ps, b->data, b->len, errstr, errstr_size) &&
		copy_end(ps, NULL, errstr, errstr_size) &&
		copy_result(ps, state, errstr, errstr_size));
}

bool pgsink_stream_begin(struct pgsink *ps, char *errstr, size_t errstr_size)
{
	ps->stream_state[0] = '\0';
	return exec_ok(ps, "SAVEPOINT sluice_copy", "savepoint", errstr,
		       errstr_size);
}

/* The previous chunk's result: false = the connection failed; a refusal
 * is kept in stream_state and ends the stream. */
static bool stream_collect(struct pgsink *ps, char *errstr, size_t errstr_size)
{
	char state[6];

	if (!ps->pending || copy_result(ps, state, errstr, errstr_size))
		return true;
	if (!state[0])
		return false;
	memcpy(ps->stream_state, state, sizeof(state));
	snprintf(ps->stream_err, sizeof(ps->stream_err), "%s", errstr);
	return true;
}

bool pgsink_stream_chunk(struct pgsink *ps, const char *sql, const char *data,
			 size_t len, char *errstr, size_t errstr_size)
{
	if (!stream_collect(ps, errstr, errstr_size))
		return false;
	if (len == 0 || ps->stream_state[0])
		return true; /* refused already: the rest is not sent */
	return copy_open(ps, sql, errstr, errstr_size) &&
	       copy_put(ps, data, len, errstr, errstr_size) &&
	       copy_end(ps, NULL, errstr, errstr_size);
}

enum pgsink_copy_result pgsink_stream_end(struct pgsink *ps, char *errstr,
					  size_t errstr_size)
{
	if (!stream_collect(ps, errstr, errstr_size))
		return PGSINK_FAILED;
	if (!ps->stream_state[0])
		return exec_ok(ps, "RELEASE SAVEPOINT sluice_copy", "savepoint",
			       errstr, errstr_size)
			   ? PGSINK_COPIED
			   : PGSINK_FAILED;
	if (strcmp(ps->stream_state, "23505") != 0) { /* unique_violation */
		snprintf(errstr, errstr_size, "%s", ps->stream_err);
		return PGSINK_FAILED;
	}
	return exec_ok(ps, "ROLLBACK TO SAVEPOINT sluice_copy", "savepoint",
		       errstr, errstr_size)
		   ? PGSINK_CONFLICT
		   : PGSINK_FAILED;
}

enum pgsink_copy_result pgsink_copy_unique(struct pgsink *ps, const char *sql,
					   const struct buf *b, char *errstr,
					   size_t errstr_size)
{
	if (b->len == 0)
		return PGSINK_COPIED;
	if (!pgsink_stream_begin(ps, errstr, errstr_size) ||
	    !pgsink_stream_chunk(ps, sql, b->data, b->len, errstr, errstr_size))
		return PGSINK_FAILED;
	return pgsink_stream_end(ps, errstr, errstr_size);
}

long long pgsink_exec(struct pgsink *ps, const char *sql, int nparams,
		      const char *const *params, const char *what, char *errstr,
		      size_t errstr_size)
{
	PGresult *res =
	    PQexecParams(ps->conn, sql, nparams, NULL, params, NULL, NULL, 0);
	long long n = -1;

	if (PQresultStatus(res) == PGRES_COMMAND_OK) {
		n = atoll(PQcmdTuples(res));
	} else {
		note_state(ps, res);
		set_err(ps, what, errstr, errstr_size);
	}
	PQclear(res);
	return n;
}

PGresult *pgsink_query(struct pgsink *ps, const char *sql, int nparams,
		       const char *const *params, const char *what,
		       char *errstr, size_t errstr_size)
{
	PGresult *res =
	    PQexecParams(ps->conn, sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		return res;
	note_state(ps, res);
	set_err(ps, what, errstr, errstr_size);
	PQclear(res);
	return NULL;
}

bool pgsink_data_error(const struct pgsink *ps)
{
	/* 22: data exception (invalid text for its type, an invalid byte
	 * sequence for the encoding, a value out of range); 23: integrity
	 * constraint violation. Neither goes away by trying again. */
	return strncmp(ps->last_state, "22", 2) == 0 ||
	       strncmp(ps->last_state, "23", 2) == 0;
}

void pgsink_clear_error(struct pgsink *ps)
{
	ps->last_state[0] = '\0';
}

void pgsink_set_dry_run(struct pgsink *ps, bool dry_run)
{
	ps->dry_run = dry_run;
}

static bool store_and_commit(struct pgsink *ps, const int32_t *parts,
			     const int64_t *next_offsets, int n, char *errstr,
			     size_t errstr_size)
{
	char *pa = int_array(parts, n);
	char *oa = bigint_array(next_offsets, n);
	const char *params[4] = {ps->group_id, ps->topic, pa, oa};
	/* One round trip: a refused upsert makes the server skip the
	 * COMMIT, and the transaction is rolled back by the caller. */
	const struct pq_step steps[] = {
	    {SQL_OFFSETS, 4, params, PGRES_COMMAND_OK, NULL},
	    {"COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL},
	};
	bool ok;

	ok = pipeline_run(ps, steps, 2, "offsets and commit", errstr,
			  errstr_size);
	free(pa);
	free(oa);
	return ok;
}

bool pgsink_commit(struct pgsink *ps, const int32_t *parts,
		   const int64_t *next_offsets, int n, char *errstr,
		   size_t errstr_size)
{
	if (ps->dry_run) {
		pgsink_rollback(ps);
		return true;
	}
	if (store_and_commit(ps, parts, next_offsets, n, errstr, errstr_size)) {
		known_committed(ps, parts, next_offsets, n);
		return true;
	}
	pgsink_rollback(ps);
	return false;
}

void pgsink_rollback(struct pgsink *ps)
{
	PGresult *res;

	known_forget(ps); /* a fence that moved comes this way too */
	if (!ps->conn)
		return;
	if (PQstatus(ps->conn) != CONNECTION_OK) {
		drop_conn(ps);
		return;
	}
	if (ps->copying) {
		char err[64];

		if (!copy_end(ps, "the batch is abandoned", err, sizeof(err)))
			return; /* dropped */
	}
	while ((res = PQgetResult(ps->conn)) != NULL) /* a pending COPY's */
		PQclear(res);
	ps->pending = false;
	res = PQexec(ps->conn, "ROLLBACK");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		drop_conn(ps);
	PQclear(res);
}
