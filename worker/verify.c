/* Mode "verify": sluice's tables in two databases compared by natural key.
 *
 * Each side is read in one REPEATABLE READ READ ONLY transaction, so each
 * is compared as of one instant. Per table, one query per side gives the
 * row count and a checksum (md5 over the rows' md5s in key order, so the
 * aggregate stays 33 bytes a row whatever the rows hold); only a table
 * whose figures differ is read again, key and row md5 in key order on
 * both sides at once, row by row (libpq's single-row mode, so a large
 * table never sits in memory), and the two streams are merged to name the
 * keys that differ. Keys and row texts are ordered byte-wise (COLLATE
 * "C") and rendered with the same session settings on both sides, so two
 * servers with other collations or time zones still agree. */
#include "verify.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "dsn.h"

/* How many differing keys a table lists. */
#define SHOW_KEYS 10

/* The tables sluice's migrations create that hold data. */
static const char *const tables[] = {"conversations",
				     "messages",
				     "leads",
				     "inboxes",
				     "workspaces",
				     "campaign_runs",
				     "campaign_messages",
				     "chat_messages",
				     "chat_statuses",
				     "chat_turns",
				     NULL};
/* Bookkeeping, which differs between any two databases by design: the
 * consumed offsets (per group), the invalidations owed to Redis and the
 * migrations applied. */
static const char *const skipped[] = {"sluice_offsets",
				      "sluice_owed_invalidations",
				      "sluice_schema_migrations", NULL};
/* When a row was written or last touched: no two databases filled at
 * different moments agree on them. */
static const char *const times[] = {"created_at", "updated_at", "inserted_at",
				    "finished_at", NULL};

struct side {
	const char *name; /* "here", "against" */
	PGconn *c;
	char where[600];
};

static bool listed(const char *const *list, const char *s)
{
	for (; *list; list++)
		if (strcmp(*list, s) == 0)
			return true;
	return false;
}

static bool exec_ok(struct side *s, const char *sql, char *err, size_t errsz)
{
	PGresult *r = PQexec(s->c, sql);
	bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;

	if (!ok)
		snprintf(err, errsz, "%s: %s", s->where,
			 PQresultErrorMessage(r));
	PQclear(r);
	return ok;
}

static bool side_open(struct side *s, const char *dsn, char *err, size_t errsz)
{
	dsn_describe(dsn, s->where, sizeof(s->where));
	s->c = PQconnectdb(dsn);
	if (PQstatus(s->c) != CONNECTION_OK) {
		snprintf(err, errsz, "%s (%s): %s", s->name, s->where,
			 PQerrorMessage(s->c));
		return false;
	}
	/* Values are rendered as text the same way on both sides. */
	return exec_ok(s,
		       "SET client_encoding TO 'UTF8'; SET TimeZone TO 'UTC'; "
		       "SET DateStyle TO 'ISO, YMD'; SET IntervalStyle TO "
		       "'postgres'; SET extra_float_digits TO 3; "
		       "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
		       err, errsz);
}

/* 1 the table exists, 0 it does not, -1 the query failed. */
static int table_exists(struct side *s, const char *table)
{
	const char *p[1] = {table};
	PGresult *r = PQexecParams(s->c, "SELECT to_regclass($1) IS NOT NULL",
				   1, NULL, p, NULL, NULL, 0);
	int rc = -1;

	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
		rc = PQgetvalue(r, 0, 0)[0] == 't';
	PQclear(r);
	return rc;
}

/* What a table is compared by. */
struct shape {
	struct buf key;	 /* SQL: the key as one text */
	struct buf row;	 /* SQL: the compared columns as one text */
	struct buf keyn; /* for people: "(a, b)" */
	int key_cols;
};

static void shape_free(struct shape *sh)
{
	buf_free(&sh->key);
	buf_free(&sh->row);
	buf_free(&sh->keyn);
}

static void quoted(PGconn *c, struct buf *b, const char *name)
{
	char *q = PQescapeIdentifier(c, name, strlen(name));

	if (!q)
		abort();
	buf_puts(b, q);
	PQfreemem(q);
}

/* The table's natural key from the catalog: its primary key unless that
 * is a generated number (a sequence's or an identity: a replay numbers
 * rows its own way), else its smallest unique index without generated
 * columns, else the whole row. The compared columns are all but the
 * generated ones and the write times. */
static bool shape_read(struct side *s, const char *table, struct shape *sh,
		       char *err, size_t errsz)
{
	static const char cols_sql[] =
	    "SELECT a.attname, (a.attidentity <> '' OR coalesce(pg_get_expr("
	    "d.adbin, d.adrelid), '') LIKE 'nextval(%') FROM pg_attribute a "
	    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = "
	    "a.attnum WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND "
	    "NOT a.attisdropped ORDER BY a.attnum";
	static const char idx_sql[] =
	    "SELECT i.indexrelid, a.attname FROM pg_index i CROSS JOIN LATERAL "
	    "unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) JOIN "
	    "pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
	    "WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred "
	    "IS NULL AND i.indexprs IS NULL ORDER BY i.indisprimary DESC, "
	    "i.indnatts, i.indexrelid, k.ord";
	const char *p[1] = {table};
	PGresult *cols =
	    PQexecParams(s->c, cols_sql, 1, NULL, p, NULL, NULL, 0);
	PGresult *idx = PQexecParams(s->c, idx_sql, 1, NULL, p, NULL, NULL, 0);
	int n = 0, first = -1, last = -1;
	bool ok = false;

	buf_init(&sh->key);
	buf_init(&sh->row);
	buf_init(&sh->keyn);
	if (PQresultStatus(cols) != PGRES_TUPLES_OK ||
	    PQresultStatus(idx) != PGRES_TUPLES_OK) {
		snprintf(
		    err, errsz, "%s: the catalog of %s: %s", s->where, table,
		    PQresultErrorMessage(
			PQresultStatus(cols) != PGRES_TUPLES_OK ? cols : idx));
		goto out;
	}
	/* The first index (rows first..last) without a generated column. */
	for (int i = 0; i < PQntuples(idx) && first < 0;) {
		const char *id = PQgetvalue(idx, i, 0);
		int j = i;
		bool generated = false;

		for (; j < PQntuples(idx) &&
		       strcmp(PQgetvalue(idx, j, 0), id) == 0;
		     j++)
			for (int c = 0; c < PQntuples(cols); c++)
				if (strcmp(PQgetvalue(cols, c, 0),
					   PQgetvalue(idx, j, 1)) == 0 &&
				    PQgetvalue(cols, c, 1)[0] == 't')
					generated = true;
		if (!generated) {
			first = i;
			last = j;
		}
		i = j;
	}
	buf_puts(&sh->row, "ROW(");
	for (int c = 0; c < PQntuples(cols); c++) {
		const char *name = PQgetvalue(cols, c, 0);

		if (PQgetvalue(cols, c, 1)[0] == 't' || listed(times, name))
			continue;
		if (n++)
			buf_puts(&sh->row, ", ");
		quoted(s->c, &sh->row, name);
	}
	buf_puts(&sh->row, ")::text");
	if (first < 0) {
		buf_puts(&sh->key, sh->row.data);
		buf_puts(&sh->keyn, "(the whole row)");
		sh->key_cols = n;
	} else {
		buf_puts(&sh->key, "ROW(");
		buf_puts(&sh->keyn, "(");
		for (int i = first; i < last; i++) {
			if (i > first) {
				buf_puts(&sh->key, ", ");
				buf_puts(&sh->keyn, ", ");
			}
			quoted(s->c, &sh->key, PQgetvalue(idx, i, 1));
			buf_puts(&sh->keyn, PQgetvalue(idx, i, 1));
		}
		buf_puts(&sh->key, ")::text");
		buf_puts(&sh->keyn, ")");
		sh->key_cols = last - first;
	}
	ok = n > 0;
	if (!ok)
		snprintf(err, errsz, "%s has no column to compare", table);
out:
	PQclear(cols);
	PQclear(idx);
	return ok;
}

/* Rows and checksum of one side; false with err when the query failed
 * (the side's transaction is back at its savepoint). */
static bool figures(struct side *s, const char *sql, char *rows, char *sum,
		    char *err, size_t errsz)
{
	PGresult *r;
	bool ok;

	if (!exec_ok(s, "SAVEPOINT verify_table", err, errsz))
		return false;
	r = PQexec(s->c, sql);
	ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
	if (ok) {
		snprintf(rows, 24, "%s", PQgetvalue(r, 0, 0));
		snprintf(sum, 40, "%s", PQgetvalue(r, 0, 1));
	} else {
		snprintf(err, errsz, "%s", PQresultErrorMessage(r));
		err[strcspn(err, "\n")] = '\0';
	}
	PQclear(r);
	if (!ok)
		exec_ok(s, "ROLLBACK TO SAVEPOINT verify_table",
			err + strlen(err), errsz - strlen(err));
	return ok;
}

/* One side's stream of (key, row md5), in key order. */
struct stream {
	struct side *s;
	PGresult *r; /* the current row, NULL at the end */
	bool failed;
};

static void stream_next(struct stream *st)
{
	PGresult *r;

	PQclear(st->r);
	st->r = NULL;
	while ((r = PQgetResult(st->s->c))) {
		if (PQresultStatus(r) == PGRES_SINGLE_TUPLE) {
			st->r = r;
			return;
		}
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			st->failed = true;
			fprintf(stderr, "verify: %s: %s", st->s->where,
				PQresultErrorMessage(r));
		}
		PQclear(r);
	}
}

static bool stream_start(struct stream *st, const char *sql)
{
	if (!PQsendQuery(st->s->c, sql) || !PQsetSingleRowMode(st->s->c)) {
		fprintf(stderr, "verify: %s: %s", st->s->where,
			PQerrorMessage(st->s->c));
		st->failed = true;
		return false;
	}
	stream_next(st);
	return !st->failed;
}

static void show_key(const char *what, const char *key, int key_cols)
{
	size_t n = strlen(key);

	/* A one-column key shows as its value, not a one-field row. */
	if (key_cols == 1 && n >= 2 && key[0] == '(' && key[n - 1] == ')')
		printf("  %s: %.*s\n", what, (int)(n - 2), key + 1);
	else
		printf("  %s: %s\n", what, key);
}

/* Names the keys that differ. false when a side could not be read. */
static bool differences(struct side *here, struct side *there, const char *sql,
			const struct shape *sh)
{
	struct stream a = {.s = here}, b = {.s = there};
	unsigned long long only_here = 0, only_there = 0, changed = 0;
	int shown = 0;

	if (!stream_start(&a, sql) || !stream_start(&b, sql)) {
		/* Drain what was sent, so the connection can be used again. */
		while (a.r || (!a.failed && PQisBusy(here->c)))
			stream_next(&a);
		while (b.r || (!b.failed && PQisBusy(there->c)))
			stream_next(&b);
		return false;
	}
	while (a.r || b.r) {
		int cmp = !a.r	 ? 1
			  : !b.r ? -1
				 : strcmp(PQgetvalue(a.r, 0, 0),
					  PQgetvalue(b.r, 0, 0));

		if (cmp < 0) {
			if (shown++ < SHOW_KEYS)
				show_key("only here", PQgetvalue(a.r, 0, 0),
					 sh->key_cols);
			only_here++;
			stream_next(&a);
		} else if (cmp > 0) {
			if (shown++ < SHOW_KEYS)
				show_key("only against", PQgetvalue(b.r, 0, 0),
					 sh->key_cols);
			only_there++;
			stream_next(&b);
		} else {
			if (strcmp(PQgetvalue(a.r, 0, 1),
				   PQgetvalue(b.r, 0, 1)) != 0) {
				if (shown++ < SHOW_KEYS)
					show_key("changed",
						 PQgetvalue(a.r, 0, 0),
						 sh->key_cols);
				changed++;
			}
			stream_next(&a);
			stream_next(&b);
		}
	}
	if (a.failed || b.failed)
		return false;
	printf("  %llu only here, %llu only against, %llu changed%s\n",
	       only_here, only_there, changed,
	       shown > SHOW_KEYS ? " (the first keys shown)" : "");
	return true;
}

/* 0 equal, 1 differs, 2 could not be read. */
static int verify_table(struct side *here, struct side *there,
			const char *table)
{
	int in_here = table_exists(here, table);
	int in_there = table_exists(there, table);
	char rows[2][24], sum[2][40], err[1024] = "";
	struct shape sh;
	struct buf sql, diff;
	int rc = 2;

	if (in_here < 0 || in_there < 0) {
		fprintf(stderr, "verify: %s: %s", table,
			PQerrorMessage(in_here < 0 ? here->c : there->c));
		return 2;
	}
	if (!in_here && !in_there) {
		printf("%s: on neither side\n", table);
		return 0;
	}
	if (in_here != in_there) {
		printf("%s: only %s; DIFFERS\n", table,
		       in_here ? "here" : "against");
		return 1;
	}
	if (!shape_read(here, table, &sh, err, sizeof(err))) {
		fprintf(stderr, "verify: %s\n", err);
		shape_free(&sh);
		return 2;
	}
	buf_init(&sql);
	buf_init(&diff);
	buf_printf(&sql,
		   "SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY k "
		   "COLLATE \"C\", h), '')) FROM (SELECT %s AS k, md5(%s) AS h "
		   "FROM ",
		   sh.key.data, sh.row.data);
	quoted(here->c, &sql, table);
	buf_puts(&sql, ") t");
	if (!figures(here, sql.data, rows[0], sum[0], err, sizeof(err))) {
		fprintf(stderr, "verify: %s here: %s\n", table, err);
		goto out;
	}
	if (!figures(there, sql.data, rows[1], sum[1], err, sizeof(err))) {
		/* The same query failing there only: the table has other
		 * columns on that side. */
		printf("%s: key %s, rows %s / -; cannot be read against (%s); "
		       "DIFFERS\n",
		       table, sh.keyn.data, rows[0], err);
		rc = PQstatus(there->c) == CONNECTION_OK ? 1 : 2;
		goto out;
	}
	if (strcmp(rows[0], rows[1]) == 0 && strcmp(sum[0], sum[1]) == 0) {
		printf("%s: key %s, rows %s / %s, md5 %s / %s; equal\n", table,
		       sh.keyn.data, rows[0], rows[1], sum[0], sum[1]);
		rc = 0;
		goto out;
	}
	printf("%s: key %s, rows %s / %s, md5 %s / %s; DIFFERS\n", table,
	       sh.keyn.data, rows[0], rows[1], sum[0], sum[1]);
	buf_printf(&diff,
		   "SELECT k, h FROM (SELECT %s AS k, md5(%s) AS h FROM ",
		   sh.key.data, sh.row.data);
	quoted(here->c, &diff, table);
	buf_puts(&diff, ") t ORDER BY k COLLATE \"C\", h");
	rc = differences(here, there, diff.data, &sh) ? 1 : 2;
out:
	buf_free(&sql);
	buf_free(&diff);
	shape_free(&sh);
	return rc;
}

int verify_run(const char *here_dsn, const char *against_dsn)
{
	struct side here = {.name = "here"}, there = {.name = "against"};
	char err[1024];
	int rc = 2, differ = 0, compared = 0;

	if (!side_open(&here, here_dsn, err, sizeof(err)) ||
	    !side_open(&there, against_dsn, err, sizeof(err))) {
		fprintf(stderr, "verify: %s", err);
		if (err[0] && err[strlen(err) - 1] != '\n')
			fputc('\n', stderr);
		goto out;
	}
	if (dsn_same_database(here_dsn, against_dsn))
		fprintf(stderr, "verify: here and against are the same "
				"database; they agree by definition\n");
	printf("here: %s (postgres_dsn); against: %s\n", here.where,
	       there.where);
	rc = 0;
	for (int i = 0; tables[i]; i++) {
		int t = verify_table(&here, &there, tables[i]);

		compared++;
		if (t == 2) {
			rc = 2;
			break;
		}
		differ += t;
	}
	if (rc == 0) {
		printf("not compared: ");
		for (int i = 0; skipped[i]; i++)
			printf("%s%s", i ? ", " : "", skipped[i]);
		printf(" (bookkeeping); columns ");
		for (int i = 0; times[i]; i++)
			printf("%s%s", i ? ", " : "", times[i]);
		printf(" (write times) and generated ids\n");
		printf("verify: %d of %d tables differ\n", differ, compared);
		rc = differ ? 1 : 0;
	}
out:
	fflush(stdout);
	PQfinish(here.c);
	PQfinish(there.c);
	return rc;
}
