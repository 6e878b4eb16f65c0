/* Connection strings for the side modes: where one comes from, and whether
 * two name the same database. */
#include "dsn.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "redisconn.h"

char *dsn_pick(const char *what, const char *arg, const char *file,
	       const char *env, char *errstr, size_t errstr_size)
{
	const char *v;

	if (arg && file) {
		snprintf(errstr, errstr_size,
			 "%s and %s-file exclude each other", what, what);
		return NULL;
	}
	if (arg)
		return xstrdup(arg);
	if (file) {
		/* A connection string may hold a password: read as one. */
		char err[512];
		char *text = util_read_secret(file, err, sizeof(err));

		if (!text)
			snprintf(errstr, errstr_size, "%s-file %s", what, err);
		return text;
	}
	v = env ? getenv(env) : NULL;
	if (v && v[0])
		return xstrdup(v);
	snprintf(errstr, errstr_size, "%s, %s-file or %s is needed", what, what,
		 env ? env : "");
	return NULL;
}

/* What a connection string says of host, port and dbname, libpq's
 * defaults filled in; false if it does not parse. */
struct pgwhere {
	char host[256], port[32], dbname[256], user[256];
};

static const char *opt_val(PQconninfoOption *o, const char *key)
{
	for (; o && o->keyword; o++)
		if (strcmp(o->keyword, key) == 0 && o->val && o->val[0])
			return o->val;
	return NULL;
}

static bool pg_where(const char *dsn, struct pgwhere *w)
{
	char *err = NULL;
	PQconninfoOption *o = PQconninfoParse(dsn, &err);
	PQconninfoOption *d;
	const char *v;

	if (!o) {
		PQfreemem(err);
		return false;
	}
	d = PQconndefaults(); /* compiled-in and PG* environment */
#define PICK(field, key, fallback)                                             \
	v = opt_val(o, key);                                                   \
	if (!v)                                                                \
		v = opt_val(d, key);                                           \
	snprintf(w->field, sizeof(w->field), "%s", v ? v : fallback)
	PICK(host, "host", "");
	if (!w->host[0]) {
		PICK(host, "hostaddr", "");
	}
	PICK(port, "port", "5432");
	PICK(user, "user", "");
	PICK(dbname, "dbname", w->user);
#undef PICK
	PQconninfoFree(o);
	if (d)
		PQconninfoFree(d);
	return true;
}

bool dsn_same_database(const char *a, const char *b)
{
	struct pgwhere wa, wb;

	if (!pg_where(a, &wa) || !pg_where(b, &wb))
		return false;
	return strcmp(wa.host, wb.host) == 0 && strcmp(wa.port, wb.port) == 0 &&
	       strcmp(wa.dbname, wb.dbname) == 0;
}

void dsn_describe(const char *dsn, char *out, size_t outsz)
{
	struct pgwhere w;

	if (!pg_where(dsn, &w))
		snprintf(out, outsz, "(unparsable connection string)");
	else
		snprintf(out, outsz, "%s:%s/%s",
			 w.host[0] ? w.host : "(socket)", w.port, w.dbname);
}

bool dsn_same_redis(const char *a, const char *b)
{
	struct redis_addr ra = {0}, rb = {0};
	char err[128];
	bool same = false;

	if (redis_addr_parse(a, &ra, err, sizeof(err)) &&
	    redis_addr_parse(b, &rb, err, sizeof(err)))
		same = strcmp(ra.host, rb.host) == 0 && ra.port == rb.port &&
		       ra.db == rb.db;
	redis_addr_free(&ra);
	redis_addr_free(&rb);
	return same;
}

bool dsn_has_password(const char *dsn)
{
	char *err = NULL;
	PQconninfoOption *o;
	bool has;

	if (strncmp(dsn, "redis://", 8) == 0) {
		struct redis_addr r = {0};
		char e[128];

		has = redis_addr_parse(dsn, &r, e, sizeof(e)) && r.password &&
		      r.password[0];
		redis_addr_free(&r);
		return has;
	}
	o = PQconninfoParse(dsn, &err);
	if (!o) {
		PQfreemem(err);
		return false;
	}
	has = opt_val(o, "password") != NULL;
	PQconninfoFree(o);
	return has;
}
