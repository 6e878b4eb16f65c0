/* Config parsing: types, bounds, enums, env overrides, unknown keys. */
#include <stddef.h>
#include <stdlib.h>

#include "../../common/config.h"
#include "check.h"

struct conf {
	char *name;
	int count;
	int mode;
	char *extra_seen;
};

static const char *const modes[] = {"off", "on", NULL};

static const struct cfg_setting table[] = {
    {"name", CFG_STR, offsetof(struct conf, name), "dflt", 0, 0, NULL,
     "TEST_SLUICE_NAME", "", CFG_RESTART, NULL},
    {"count", CFG_INT, offsetof(struct conf, count), "5", 1, 10, NULL, NULL, "",
     CFG_RESTART, NULL},
    {"mode", CFG_ENUM, offsetof(struct conf, mode), "off", 0, 0, modes, NULL,
     "", CFG_RESTART, NULL},
    CFG_END};

static bool extra(void *target, const char *key, const char *value,
		  const char *origin, char *errstr, size_t errstr_size)
{
	struct conf *c = target;

	(void)origin;
	if (strncmp(key, "kafka.", 6) != 0) {
		snprintf(errstr, errstr_size, "unknown setting \"%s\"", key);
		return false;
	}
	free(c->extra_seen);
	c->extra_seen = strdup(value);
	return true;
}

static const struct {
	const char *key, *value;
	bool ok;
	const char *err_has;
} set_cases[] = {
    {"name", "hello", true, NULL},
    {"count", "10", true, NULL},
    {"count", "11", false, "outside 1..10"},
    {"count", "0", false, "outside"},
    {"count", "3x", false, "not an integer"},
    {"count", "", false, "not an integer"},
    {"mode", "on", true, NULL},
    {"mode", "maybe", false, "not one of off on"},
    {"kafka.linger.ms", "3", true, NULL},
    {"nosuch", "1", false, "unknown setting \"nosuch\""},
};

static const char *write_file(const char *text)
{
	static char path[64];
	int fd;

	snprintf(path, sizeof(path), "/tmp/sluice-test-config-XXXXXX");
	fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");

	fputs(text, f);
	fclose(f);
	return path;
}

int main(void)
{
	struct conf c = {0};
	char err[256];

	CHECK(cfg_load(table, &c, NULL, extra, NULL, err, sizeof(err)), "%s",
	      err);
	CHECK_STR(c.name, "dflt", "default name");
	CHECK(c.count == 5 && c.mode == 0, "defaults %d %d", c.count, c.mode);

	for (size_t i = 0; i < sizeof(set_cases) / sizeof(set_cases[0]); i++) {
		bool ok;

		err[0] = '\0';
		ok = cfg_set(table, &c, set_cases[i].key, set_cases[i].value,
			     extra, err, sizeof(err));
		CHECK(ok == set_cases[i].ok, "case %zu (%s=%s): %s", i,
		      set_cases[i].key, set_cases[i].value, err);
		if (set_cases[i].err_has)
			CHECK(strstr(err, set_cases[i].err_has) != NULL,
			      "case %zu error \"%s\" lacks \"%s\"", i, err,
			      set_cases[i].err_has);
	}
	CHECK_STR(c.extra_seen, "3", "kafka passthrough");
	cfg_free(table, &c);
	free(c.extra_seen);
	memset(&c, 0, sizeof(c));

	/* A file: comments, blanks, quotes, spaces; then env wins. */
	{
		const char *path = write_file(
		    "# comment\n\n  name = \"from file\"  \ncount=7\n"
		    "; also a comment\nmode = on\n");

		setenv("TEST_SLUICE_NAME", "from env", 1);
		CHECK(cfg_load(table, &c, path, extra, NULL, err, sizeof(err)),
		      "%s", err);
		CHECK_STR(c.name, "from env", "env override");
		CHECK(c.count == 7 && c.mode == 1, "file values %d %d", c.count,
		      c.mode);
		unsetenv("TEST_SLUICE_NAME");
		cfg_free(table, &c);
		remove(path);
	}
	/* Errors name the file and line. */
	{
		const char *path = write_file("name = x\nthis line is bad\n");

		CHECK(!cfg_load(table, &c, path, extra, NULL, err, sizeof(err)),
		      "bad line accepted");
		CHECK(strstr(err, ":2: expected key = value") != NULL, "%s",
		      err);
		cfg_free(table, &c);
		remove(path);
	}
	CHECK(!cfg_load(table, &c, "/nonexistent/sluice.conf", extra, NULL, err,
			sizeof(err)),
	      "missing file accepted");
	cfg_free(table, &c);
	/* --check-config output never shows a password. */
	{
		static const struct {
			const char *value, *want;
		} masks[] = {
		    {"redis://bob:s3cret@h:1/0",
		     "name = redis://bob:***@h:1/0\n"},
		    {"postgresql://u:pw@h/db",
		     "name = postgresql://u:***@h/db\n"},
		    {"host=h password=pw",
		     "name = (hidden: holds a password)\n"},
		    {"redis://h:6379/0", "name = redis://h:6379/0\n"},
		};
		for (size_t i = 0; i < sizeof(masks) / sizeof(masks[0]); i++) {
			char *text = NULL;
			size_t len = 0;
			FILE *out = open_memstream(&text, &len);

			memset(&c, 0, sizeof(c));
			c.name = strdup(masks[i].value);
			cfg_dump(table, &c, NULL, out);
			fclose(out);
			CHECK(strncmp(text, masks[i].want,
				      strlen(masks[i].want)) == 0,
			      "dump of %s: %s", masks[i].value, text);
			free(text);
			free(c.name);
		}
	}
	return check_done("test_config");
}
