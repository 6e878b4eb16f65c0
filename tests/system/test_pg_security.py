# PostgreSQL secured (docs/security.md): sluice's three roles and what each
# may do, and a TLS-only cluster (deploy/services.sh with SLUICE_PG_TLS=1:
# ssl=on, pg_hba hostssl only, clients with sslmode=verify-full against the
# test CA). The TLS cluster is this module's own; Kafka and Redis are the
# session's.

import subprocess
import uuid

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from harness import (PG_AGENT, PG_LOOKUP, PG_WORKER, REPO, dsn_as,
                     free_port, http_request, transcript, wait_until)
from secure_util import sessions_of, start_tls_postgres, stop_services

MIGRATE = REPO / "deploy" / "migrate.sh"
ROLES = REPO / "deploy" / "roles.sh"


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory):
    d = tmp_path_factory.mktemp("pgtls")
    try:
        yield start_tls_postgres(d)
    finally:
        stop_services(d, destroy=True)


def _connect_error(dsn):
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(dsn, connect_timeout=10).close()
    return str(exc.value)


# ------------------------------------------------------------------ TLS --

def test_worker_writes_over_verify_full_as_sluice_worker(pipeline, tls_pg):
    assert "sslmode=verify-full" in tls_pg.worker_dsn
    port = free_port()
    worker = pipeline.start_worker(postgres_dsn=tls_pg.worker_dsn,
                                   listen=f"127.0.0.1:{port}")
    ingest = pipeline.start_ingest()
    cid = pipeline.cid("tls")
    r = ingest.post(transcript(cid, [("m1", "user", "hello over TLS"),
                                     ("m2", "assistant", "hi")]))
    assert r.status == 202, r
    rows = wait_until(lambda: tls_pg.query(
        "SELECT external_event_id, content FROM messages"
        " WHERE conversation_id = %s ORDER BY position", (cid,)) or None,
        60, 0.2, "the transcript to land in the TLS PostgreSQL")
    assert rows == [("m1", "hello over TLS"), ("m2", "hi")]
    # Its sessions, the sink's and the probe's: every one sluice_worker's,
    # and every one TLS.
    wait_until(lambda: http_request(port, "GET", "/readyz").status == 200,
               30, 0.2, "the worker's /readyz")
    sessions = sessions_of(tls_pg.query, worker.pid)
    assert sessions and set(sessions) == {(PG_WORKER, True)}, sessions


def test_plain_tcp_is_refused(tls_pg):
    for role in (tls_pg.owner, PG_WORKER, PG_AGENT, PG_LOOKUP):
        plain = make_conninfo(tls_pg.worker_dsn, user=role,
                              sslmode="disable")
        msg = _connect_error(plain)
        assert "no pg_hba.conf entry" in msg and "no encryption" in msg, msg


def test_wrong_ca_is_named_in_the_log_and_readyz(pipeline, tls_pg,
                                                 tmp_path):
    other = tmp_path / "other-ca.crt"
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         str(tmp_path / "other-ca.key"), "-out", str(other), "-days", "1",
         "-subj", "/CN=not the test CA"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dsn = make_conninfo(tls_pg.worker_dsn, sslrootcert=str(other))
    assert "certificate verify failed" in _connect_error(dsn)

    port = free_port()
    worker = pipeline.start_worker(wait=False, postgres_dsn=dsn,
                                   listen=f"127.0.0.1:{port}")
    worker.wait_log(r"postgres not reachable yet: .*certificate verify "
                    r"failed")

    def not_ready():
        try:
            r = http_request(port, "GET", "/readyz", timeout=5)
        except OSError:
            return None
        pg = (r.json or {}).get("postgres", {})
        return r if r.status == 503 and "certificate verify failed" in \
            pg.get("error", "") else None
    r = wait_until(not_ready, 30, 0.2,
                   "/readyz to name the certificate failure")
    assert r.json["postgres"]["ok"] is False, r.json
    # Nothing written: the worker is still up, waiting.
    worker.assert_alive()


# ---------------------------------------------------------------- roles --

def test_agent_claims_and_answers_but_reads_no_outbox(tls_pg):
    biz, sender = f"biz-{uuid.uuid4().hex[:8]}", "15550001111"
    tls_pg.query(
        "INSERT INTO chat_turns (business_number, sender, message_ids,"
        " first_message_at, last_message_at) VALUES (%s, %s, %s, now(),"
        " now())", (biz, sender, ["wamid.1"]))
    with psycopg.connect(tls_pg.agent_dsn, autocommit=True) as a:
        assert a.execute("SELECT current_user").fetchone()[0] == PG_AGENT
        turn = a.execute("SELECT id, business_number, status FROM"
                         " sluice_claim_turn('agent-1')").fetchone()
        assert turn is not None and turn[1:] == (biz, "claimed"), turn
        assert a.execute("SELECT sluice_answer_turn(%s)",
                         (turn[0],)).fetchone()[0] is True
        # It reads turns and messages.
        assert a.execute("SELECT status FROM chat_turns WHERE id = %s",
                         (turn[0],)).fetchone() == ("answered",)
        a.execute("SELECT count(*) FROM chat_messages").fetchone()
        # And nothing else: not the outbox, not another table, no write.
        for sql in ("SELECT * FROM campaign_messages",
                    "SELECT * FROM messages", "SELECT * FROM leads",
                    "UPDATE chat_turns SET status = 'open'",
                    "DELETE FROM chat_messages",
                    "SELECT get_lead_full_context('x')"):
            with pytest.raises(errors.InsufficientPrivilege) as exc:
                a.execute(sql)
            assert "permission denied" in str(exc.value), sql


def test_worker_role_has_no_ddl(tls_pg):
    with psycopg.connect(tls_pg.worker_dsn, autocommit=True) as w:
        assert w.execute("SELECT current_user").fetchone()[0] == PG_WORKER
        for sql, why in (("DROP TABLE messages", "must be owner"),
                         ("ALTER TABLE messages ADD COLUMN x int",
                          "must be owner"),
                         ("TRUNCATE messages", "permission denied"),
                         ("CREATE TABLE sluice_x (a int)",
                          "permission denied for schema public"),
                         ("CREATE FUNCTION sluice_f() RETURNS int"
                          " LANGUAGE sql AS 'SELECT 1'",
                          "permission denied for schema public"),
                         ("INSERT INTO leads (id) VALUES ('x')",
                          "permission denied")):
            with pytest.raises(errors.InsufficientPrivilege) as exc:
                w.execute(sql)
            assert why in str(exc.value), (sql, str(exc.value))
        # What it is for: a row in, its temporary staging tables, a call.
        w.execute("INSERT INTO sluice_offsets (group_id, topic, partition,"
                  " next_offset) VALUES ('pgsec', 't', 0, 1)")
        w.execute("CREATE TEMP TABLE stage (a int)")
        w.execute("SELECT get_lead_full_context('nobody')")


def test_lookup_role_only_calls_the_two_functions(tls_pg):
    lead = f"lead-{uuid.uuid4().hex[:8]}"
    tls_pg.query("INSERT INTO leads (id, name, phone) VALUES (%s, 'Ana',"
                 " '+1 555 0100')", (lead,))
    with psycopg.connect(tls_pg.lookup_dsn, autocommit=True) as c:
        ctx = c.execute("SELECT get_lead_full_context(%s)",
                        (lead,)).fetchone()[0]
        assert ctx["lead"]["name"] == "Ana", ctx
        ctx = c.execute("SELECT get_lead_context_by_phone('15550100')"
                        ).fetchone()[0]
        assert ctx["lead"]["id"] == lead, ctx
        for sql in ("SELECT * FROM leads", "SELECT * FROM messages",
                    "SELECT * FROM conversations",
                    "SELECT * FROM chat_turns",
                    "SELECT * FROM sluice_claim_turn('x')",
                    "INSERT INTO sluice_offsets VALUES ('g', 't', 0, 0)"):
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(sql)


def test_grants_cover_every_table_and_function(services):
    """The rule of 006 held by every migration: each of sluice's tables
    is the worker's to write, and no function is PUBLIC's to call."""
    rows = services.query(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
        " AND c.relkind = 'r' AND c.relname NOT IN"
        " ('sluice_schema_migrations', 'leads', 'inboxes', 'workspaces')"
        " AND c.relname IN (SELECT tablename FROM pg_tables"
        " WHERE tableowner = (SELECT tableowner FROM pg_tables"
        " WHERE tablename = 'messages'))"
        " AND NOT has_table_privilege(%s, c.oid,"
        " 'SELECT, INSERT, UPDATE, DELETE')", (PG_WORKER,))
    assert rows == [], f"tables the worker cannot write: {rows}"
    rows = services.query(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n"
        " ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND"
        " (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a"
        " WHERE a.grantee = 0))")
    assert rows == [], f"functions PUBLIC may call: {rows}"
    # Nor may the worker create anything in the schema.
    assert services.scalar(
        "SELECT has_schema_privilege(%s, 'public', 'CREATE')",
        (PG_WORKER,)) is False


def test_suite_daemons_run_as_the_roles(pipeline, services):
    """The ordinary pipeline (every other test's) writes as sluice_worker
    and looks leads up as sluice_lookup, never as the owner."""
    s = pipeline.worker_settings()
    assert psycopg.conninfo.conninfo_to_dict(s["postgres_dsn"])["user"] \
        == PG_WORKER
    assert psycopg.conninfo.conninfo_to_dict(
        s["lead_context.postgres_dsn"])["user"] == PG_LOOKUP
    port = free_port()
    worker = pipeline.start_worker(listen=f"127.0.0.1:{port}")
    wait_until(lambda: http_request(port, "GET", "/readyz").status == 200,
               30, 0.2, "the worker's /readyz")
    users = {u for u, _ in sessions_of(services.query, worker.pid)}
    assert users == {PG_WORKER}, users


# ---------------------------------------------------------- the step ----

def test_migrations_refuse_without_the_roles_step(tls_pg):
    db = f"pgsec_{uuid.uuid4().hex[:8]}"
    tls_pg.query(f'CREATE DATABASE "{db}"')
    tls_pg.query(f"ALTER ROLE {PG_AGENT} RENAME TO {PG_AGENT}_away")
    try:
        r = subprocess.run([str(MIGRATE), make_conninfo(tls_pg.owner_dsn,
                                                        dbname=db)],
                           capture_output=True, text=True, timeout=120)
    finally:
        tls_pg.query(f"ALTER ROLE {PG_AGENT}_away RENAME TO {PG_AGENT}")
    assert r.returncode != 0
    assert f"roles missing: {PG_AGENT}" in r.stderr and \
        "sluice-roles" in r.stderr, r.stderr
    # The step run again is harmless, and the migrations then apply.
    secrets = tls_pg.dir / "pg-tls" / "secrets"
    r = subprocess.run([str(ROLES), "--password-dir", str(secrets),
                        tls_pg.owner_dsn], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(MIGRATE), make_conninfo(tls_pg.owner_dsn,
                                                    dbname=db)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # The roles' passwords still hold (the step hashed the same files).
    with psycopg.connect(dsn_as(make_conninfo(tls_pg.owner_dsn, dbname=db),
                                PG_WORKER)) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == PG_WORKER


def test_roles_step_refuses_an_open_password_file(tls_pg, tmp_path):
    pw = tmp_path / PG_LOOKUP
    pw.write_text("s3cret-enough\n")
    pw.chmod(0o644)
    r = subprocess.run([str(ROLES), "--password-dir", str(tmp_path),
                        tls_pg.owner_dsn], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "readable by group or others" in r.stderr, r.stderr
    assert "s3cret" not in r.stderr + r.stdout
    # The lookup role's password is unchanged: the passfile still works.
    with psycopg.connect(tls_pg.lookup_dsn) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == PG_LOOKUP


def test_role_passwords_are_scram_verifiers(tls_pg):
    """What the step stores is a SCRAM verifier made on the client: the
    password itself never reaches the server."""
    rows = tls_pg.query(
        "SELECT rolname, left(rolpassword, 14) FROM pg_authid"
        " WHERE rolname = ANY(%s) ORDER BY 1",
        ([PG_AGENT, PG_LOOKUP, PG_WORKER],))
    assert rows == [(PG_AGENT, "SCRAM-SHA-256$"), (PG_LOOKUP, "SCRAM-SHA-256$"),
                    (PG_WORKER, "SCRAM-SHA-256$")], rows
