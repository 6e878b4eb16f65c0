/* Connection strings: the same database however it is spelled, the same
 * Redis, a password spotted, and where a side mode's DSN comes from. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../worker/dsn.h"
#include "check.h"

static const struct {
	const char *a, *b;
	bool same;
} databases[] = {
    {"postgresql://127.0.0.1:5432/a", "host=127.0.0.1 port=5432 dbname=a",
     true},
    {"postgresql://127.0.0.1/a", "host=127.0.0.1 dbname=a port=5432", true},
    {"postgresql://u:pw@db.example/a?sslmode=require",
     "host=db.example dbname=a", true},
    {"postgresql://127.0.0.1:5433/a", "postgresql://127.0.0.1:5432/a", false},
    {"postgresql://h/a", "postgresql://h/b", false},
    {"postgresql://h/a", "postgresql://k/a", false},
    {"host=h user=bob", "host=h dbname=bob", true}, /* dbname: the user */
    {"postgresql:///a", "dbname=a", true},
    {"postgresql:///a", "host=h dbname=a", false},
    {"nonsense", "dbname=nonsense", false},
    {"host=h dbname=a", "bogus_key=1", false},
};

static const struct {
	const char *a, *b;
	bool same;
} redises[] = {
    {"redis://h:6379/0", "redis://h", true},
    {"redis://:pw@h:6379", "redis://h/0", true},
    {"redis://h/1", "redis://h/0", false},
    {"redis://h:6380", "redis://h", false},
    {"redis://h", "redis://k", false},
    {"redis://h", "http://h", false},
};

static const struct {
	const char *dsn;
	bool has;
} passwords[] = {
    {"postgresql://u:pw@h/a", true},
    {"host=h password=x", true},
    {"postgresql://u@h/a", false},
    {"host=h dbname=a", false},
    {"redis://:pw@h", true},
    {"redis://user:pw@h:1/2", true},
    {"redis://h", false},
};

static void pick(void)
{
	char err[256], path[] = "/tmp/sluice-test-dsn-XXXXXX";
	int fd = mkstemp(path);
	char *v;

	CHECK(fd >= 0, "mkstemp");
	CHECK(write(fd, "dbname=fromfile\n", 16) == 16, "write");
	close(fd);
	setenv("SLUICE_TEST_DSN", "dbname=fromenv", 1);
	v = dsn_pick("--x", "dbname=fromarg", NULL, "SLUICE_TEST_DSN", err,
		     sizeof(err));
	CHECK_STR(v, "dbname=fromarg", "the option first");
	free(v);
	v = dsn_pick("--x", NULL, path, "SLUICE_TEST_DSN", err, sizeof(err));
	CHECK_STR(v, "dbname=fromfile", "then the file's line");
	free(v);
	v = dsn_pick("--x", NULL, NULL, "SLUICE_TEST_DSN", err, sizeof(err));
	CHECK_STR(v, "dbname=fromenv", "then the environment");
	free(v);
	v = dsn_pick("--x", "dbname=a", path, "SLUICE_TEST_DSN", err,
		     sizeof(err));
	CHECK(!v && strstr(err, "exclude each other"), "both: %s", err);
	unsetenv("SLUICE_TEST_DSN");
	v = dsn_pick("--x", NULL, NULL, "SLUICE_TEST_DSN", err, sizeof(err));
	CHECK(!v && strstr(err, "SLUICE_TEST_DSN"), "none: %s", err);
	v = dsn_pick("--x", NULL, "/nonexistent/dsn", NULL, err, sizeof(err));
	CHECK(!v && strstr(err, "--x-file"), "unreadable: %s", err);
	/* A connection string may hold a password: read as a secret. */
	CHECK(chmod(path, 0644) == 0, "chmod");
	v = dsn_pick("--x", NULL, path, NULL, err, sizeof(err));
	CHECK(!v && strstr(err, "--x-file") && strstr(err, "too open") &&
		  !strstr(err, "fromfile\n"),
	      "readable by others: %s", err);
	unlink(path);
}

int main(void)
{
	/* libpq's defaults come from the environment: fix them. */
	const char *pg[] = {"PGHOST",	  "PGHOSTADDR", "PGPORT",
			    "PGDATABASE", "PGSERVICE",	"PGSERVICEFILE",
			    NULL};

	for (int i = 0; pg[i]; i++)
		unsetenv(pg[i]);
	setenv("PGUSER", "tester", 1);
	for (size_t i = 0; i < sizeof(databases) / sizeof(databases[0]); i++) {
		CHECK(dsn_same_database(databases[i].a, databases[i].b) ==
			  databases[i].same,
		      "%s vs %s", databases[i].a, databases[i].b);
		CHECK(dsn_same_database(databases[i].b, databases[i].a) ==
			  databases[i].same,
		      "%s vs %s", databases[i].b, databases[i].a);
	}
	for (size_t i = 0; i < sizeof(redises) / sizeof(redises[0]); i++)
		CHECK(dsn_same_redis(redises[i].a, redises[i].b) ==
			  redises[i].same,
		      "%s vs %s", redises[i].a, redises[i].b);
	for (size_t i = 0; i < sizeof(passwords) / sizeof(passwords[0]); i++)
		CHECK(dsn_has_password(passwords[i].dsn) == passwords[i].has,
		      "%s", passwords[i].dsn);
	pick();
	return check_done("dsn");
}
