/* Who may call the admin routes (loopback, the bearer token), the
 * log-level body, sane request ids and the configuration view's masking. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/access.h"
#include "../../common/admin.h"
#include "../../common/log.h"
#include "check.h"

static struct sockaddr_storage addr(const char *text)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(text, ':')) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		in6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, text, &in6->sin6_addr);
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		in->sin_family = AF_INET;
		inet_pton(AF_INET, text, &in->sin_addr);
	}
	return ss;
}

struct cfgt {
	char *dsn;
	char *url;
	int n;
	int level;
};

int main(void)
{
	static const struct {
		const char *peer, *auth, *token, *want; /* NULL want: ok */
	} auth[] = {
	    {"127.0.0.1", NULL, NULL, NULL},
	    {"127.9.8.7", NULL, "t0k", NULL},
	    {"::1", NULL, NULL, NULL},
	    {"::ffff:127.0.0.1", NULL, NULL, NULL},
	    {"::ffff:10.0.0.1", NULL, NULL, "admin_token_required"},
	    {"192.0.2.2", NULL, NULL, "admin_token_required"},
	    {"192.0.2.2", NULL, "t0k", "admin_token_required"},
	    {"fd00::2", NULL, "t0k", "admin_token_required"},
	    {"192.0.2.2", "Bearer t0k", "t0k", NULL},
	    {"192.0.2.2", "bearer  t0k", "t0k", NULL},
	    {"192.0.2.2", "Bearer t0", "t0k", "admin_token_invalid"},
	    {"192.0.2.2", "Bearer t0kk", "t0k", "admin_token_invalid"},
	    {"192.0.2.2", "Bearer ", "t0k", "admin_token_invalid"},
	    {"192.0.2.2", "Basic dDBr", "t0k", "admin_token_invalid"},
	    {"192.0.2.2", "Bearer t0k", NULL, "admin_token_invalid"},
	    /* a header present must be right, from loopback too */
	    {"127.0.0.1", "Bearer nope", "t0k", "admin_token_invalid"},
	};
	static const struct {
		const char *body;
		int want;
	} levels[] = {
	    {"debug", LOG_DEBUG},
	    {" warn\n", LOG_WARN},
	    {"error", LOG_ERROR},
	    {"{\"level\": \"info\"}", LOG_INFO},
	    {" {\"level\":\"debug\"} ", LOG_DEBUG},
	    {"", -1},
	    {"DEBUG", -1},
	    {"verbose", -1},
	    {"{\"level\": 1}", -1},
	    {"{\"lvl\": \"info\"}", -1},
	    {"{\"level\": \"info\"", -1},
	    {"debugdebugdebugdebug", -1},
	};
	static const struct {
		const char *id;
		bool ok;
	} ids[] = {
	    {"abc-123", true},	  {"x", true},		{"", false},
	    {"has space", false}, {"tab\there", false}, {"caf\xc3\xa9", false},
	    {"nl\n", false},
	};
	static const struct cfg_setting table[] = {
	    {"dsn", CFG_STR, offsetof(struct cfgt, dsn), "", 0, 0, NULL, NULL,
	     "", CFG_RESTART, NULL},
	    {"url", CFG_STR, offsetof(struct cfgt, url), "", 0, 0, NULL, NULL,
	     "", CFG_RESTART, NULL},
	    {"n", CFG_INT, offsetof(struct cfgt, n), "0", 0, 100, NULL, NULL,
	     "", CFG_RESTART, NULL},
	    {"level", CFG_ENUM, offsetof(struct cfgt, level), "info", 0, 0,
	     log_level_names, NULL, "", CFG_RUNTIME, NULL},
	    CFG_END};
	struct cfgt t = {"host=db password=hunter2",
			 "redis://u:hunter2@r:6379/0", 7, LOG_WARN};
	struct cfg_kv *kv = NULL;
	char long_id[200], out[ACCESS_ID_SIZE],
	    path[] = "/tmp/sluice-tok-XXXXXX";
	char err[256], *tok = NULL, *text;
	cJSON *doc;
	int fd;

	for (size_t i = 0; i < sizeof(auth) / sizeof(auth[0]); i++) {
		struct sockaddr_storage ss = addr(auth[i].peer);
		const char *got = admin_authorize((struct sockaddr *)&ss,
						  auth[i].auth, auth[i].token);

		CHECK(
		    (got == NULL && auth[i].want == NULL) ||
			(got && auth[i].want && strcmp(got, auth[i].want) == 0),
		    "%s with %s: %s, want %s", auth[i].peer,
		    auth[i].auth ? auth[i].auth : "(none)", got ? got : "ok",
		    auth[i].want ? auth[i].want : "ok");
	}
	CHECK(admin_authorize(NULL, NULL, "t") != NULL, "no peer: refused");
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		CHECK(
		    admin_parse_level(levels[i].body, strlen(levels[i].body)) ==
			levels[i].want,
		    "level \"%s\"", levels[i].body);
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
		CHECK(access_request_id_ok(ids[i].id) == ids[i].ok, "id \"%s\"",
		      ids[i].id);
	memset(long_id, 'a', sizeof(long_id));
	long_id[128] = '\0';
	CHECK(access_request_id_ok(long_id), "128 characters are fine");
	long_id[128] = 'a';
	long_id[129] = '\0';
	CHECK(!access_request_id_ok(long_id), "129 are not");
	access_request_id(long_id, out, sizeof(out));
	CHECK(strncmp(out, "req_", 4) == 0 && strlen(out) == 36,
	      "a new id instead: %s", out);
	access_request_id("mine-1", out, sizeof(out));
	CHECK_STR(out, "mine-1", "the client's id kept");

	/* The token file: trailing blanks cut, empty refused. */
	fd = mkstemp(path);
	CHECK(fd >= 0, "mkstemp");
	CHECK(write(fd, "s3cret \n", 8) == 8, "write");
	close(fd);
	CHECK(admin_token_load(path, &tok, err, sizeof(err)), "%s", err);
	CHECK_STR(tok, "s3cret", "token");
	free(tok);
	fd = open(path, O_WRONLY | O_TRUNC);
	CHECK(fd >= 0 && write(fd, "\n", 1) == 1, "truncate");
	close(fd);
	CHECK(!admin_token_load(path, &tok, err, sizeof(err)) &&
		  strstr(err, "not one secret on one line"),
	      "an empty token refused: %s", err);
	CHECK(chmod(path, 0640) == 0, "chmod");
	CHECK(!admin_token_load(path, &tok, err, sizeof(err)) &&
		  strstr(err, "admin_token_file") && strstr(err, "too open"),
	      "a token group can read refused: %s", err);
	unlink(path);

	/* The configuration view: masked, typed, flagged. */
	cfg_kv_append(&kv, "kafka.sasl.password", "hunter2", NULL);
	cfg_kv_append(&kv, "kafka.linger.ms", "5", NULL);
	doc = admin_config_json(table, &t, kv);
	text = cJSON_PrintUnformatted(doc);
	if (!text)
		return 1;
	CHECK(!strstr(text, "hunter2"), "a secret shown: %s", text);
	CHECK(
	    strstr(
		text,
		"\"url\":{\"value\":\"redis://u:***@r:6379/0\",\"runtime\":false}"),
	    "%s", text);
	CHECK(strstr(text, "\"n\":{\"value\":7,\"runtime\":false}"), "%s",
	      text);
	CHECK(strstr(text, "\"level\":{\"value\":\"warn\",\"runtime\":true}"),
	      "%s", text);
	CHECK(strstr(text, "\"kafka.sasl.password\":{\"value\":\"(hidden)\""),
	      "%s", text);
	CHECK(strstr(text, "\"kafka.linger.ms\":{\"value\":\"5\""), "%s", text);
	cJSON_free(text);
	cJSON_Delete(doc);
	cfg_kv_free(kv);
	return check_done("test_admin");
}
