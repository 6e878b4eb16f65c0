/* PostgreSQL connection strings and Redis URLs as the side modes (replay,
 * verify) take them: from an option, a file or the environment, so one
 * holding a password need not be in argv, and compared by what they name
 * rather than by their spelling. */
#ifndef SLUICE_DSN_H
#define SLUICE_DSN_H

#include <stdbool.h>
#include <stddef.h>

/* The value from `arg` (an option's text), else the first line of `file`,
 * else the environment variable `env`. NULL with errstr when none gives
 * one or `arg` and `file` are both set; `what` names the option in
 * errors ("--against"). Returns a malloc'd string. */
char *dsn_pick(const char *what, const char *arg, const char *file,
	       const char *env, char *errstr, size_t errstr_size);

/* Whether two libpq connection strings (key=value or postgresql:// URLs)
 * name the same database: host, port and dbname, with libpq's defaults
 * (the environment's PGHOST etc. included) for what they leave out. An
 * unparsable string names no database: false. */
bool dsn_same_database(const char *a, const char *b);

/* "host:port/dbname" of a connection string, without its user or
 * password, for messages. */
void dsn_describe(const char *dsn, char *out, size_t outsz);

/* Whether two redis:// URLs name the same server and database (the
 * defaults filled in: port 6379, db 0); false if either is unparsable. */
bool dsn_same_redis(const char *a, const char *b);

/* Whether a connection string or URL carries a password. */
bool dsn_has_password(const char *dsn);

#endif
