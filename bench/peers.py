"""sluice next to its peers: what a team would otherwise deploy for each
half, on the same box, the same services and the same records, in the
same run (bench/bench.py --only peers, and every full `make bench`).

  HTTP -> Kafka: an Apache Camel route (bench/peers/camel: platform-http on
      Vert.x -> kafka, acks=all, idempotent producer, 202 after the ack)
      against sluice-ingest: wrk with bench/post.lua (closed loop, 256
      connections), then bench/loadgen at one fixed rate (half the smaller
      of the two maxima, so both can hold it) for the p99.
  Kafka -> PostgreSQL: Kafka Connect (standalone) with Debezium's JDBC sink
      connector in upsert mode against sluice-worker: the rows sluice-worker
      wrote from its transcript records, given to Connect as one record per
      row (JsonConverter with schemas) and upserted into a table shaped like
      `messages`.

Every figure is checked: each 202 is a record in the topic, and the
peer's table ends with exactly the rows sluice-worker wrote, byte for byte.
The jars come from Maven Central through bench/peers/fetch.sh (cached).
"""
import json
import os
import re
import subprocess
import time
import urllib.request
import uuid

from benchlib import BUILD, REPO, daemon, free_port, stop, wait_http

JAVA = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
HEAP = ["-Xms256m", "-Xmx1g"]
PATH = "/v1/webhooks/tavus"


def fetch():
    """The cache directory of the peers' jars (fetched on first use)."""
    out = subprocess.run([os.path.join(REPO, "bench", "peers", "fetch.sh"), "--print-dir"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def wrk(port, seconds, conns=256):
    """Closed loop with bench/post.lua: (req/s, p99 ms, 2xx answers)."""
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(conns), "-d", f"{seconds}s", "--latency",
         "-s", os.path.join(REPO, "bench", "post.lua"), f"http://127.0.0.1:{port}{PATH}"],
        check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99_ms, total - (int(bad.group(1)) if bad else 0)


def loadgen(port, rate, seconds, conns=256):
    """Open loop at a fixed rate: dict of p50, p99, ok, other, rate."""
    out = subprocess.run([os.path.join(BUILD, "loadgen"), "127.0.0.1", str(port), PATH,
                          str(int(rate)), str(seconds), str(conns)],
                         check=True, capture_output=True, text=True).stdout
    f = dict(zip(out.split()[0::2], out.split()[1::2]))
    return {"p50": float(f["p50"]), "p99": float(f["p99"]), "ok": int(f["ok"]),
            "other": int(f["other"]), "rate": float(f["rate"])}


def create_topic(brokers, topic, partitions=4):
    """The topic as sluice-ingest creates its own (topic_partitions = 4)."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": brokers})  # alive until the result
    fut = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    fut[topic].result(30)


def topic_records(brokers, topic):
    """Records in the topic: the sum of its partitions' high watermarks."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"count-{uuid.uuid4().hex[:6]}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in parts)
    finally:
        c.close()


def post_ok(port):
    body = json.dumps({"conversation_id": f"peer-ready-{uuid.uuid4().hex[:6]}",
                       "event_type": "application.transcription_ready",
                       "properties": {"transcript": [{"role": "user", "content": "ready"}]}})
    req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 202
    except Exception:
        return False


def wait_post(port, proc, what, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before it answered")
        if post_ok(port):
            return
        time.sleep(0.5)
    raise SystemExit(f"{what} did not answer a POST with 202 in {timeout} s")


def start_camel(base, env, tmp, port, topic):
    cmd = [JAVA, *HEAP, "-cp", f"{base}/camel/classes:{base}/camel/libs/*",
           "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
           f"-Dpeer.port={port}", f"-Dpeer.brokers={env['SLUICE_KAFKA_BROKERS']}",
           f"-Dpeer.topic={topic}", "dev.sluice.bench.IngestRoute"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "camel.log"), "w"))


def check_landed(brokers, topic, acked, what):
    """Every 202 is a record in the topic (a request whose answer was cut
    off may add a record without a 202, never the other way round)."""
    n = topic_records(brokers, topic)
    if n < acked:
        raise SystemExit(f"{what}: {acked} requests got 202 but {topic} holds {n} records")
    return n


def bench_peer_ingest(env, tmp, seconds, row):
    brokers = env["SLUICE_KAFKA_BROKERS"]
    base = fetch()
    run = uuid.uuid4().hex[:8]
    s_topic, c_topic = f"bench-pi-{run}", f"bench-pc-{run}"
    iport, cport = free_port(), free_port()
    conf = os.path.join(tmp, "peer-ingest.conf")
    with open(conf, "w") as f:
        f.write(f"listen = 127.0.0.1:{iport}\ntopic = {s_topic}\n"
                f"schema_dir = {REPO}/schemas\nlog_level = warn\n"
                "source.tavus.kind = transcript\nsource.tavus.signature = none\n")
    create_topic(brokers, c_topic)
    ingest = daemon("sluice-ingest", conf, env, os.path.join(tmp, "peer-ingest.log"))
    camel = start_camel(base, env, tmp, cport, c_topic)
    acked = {"sluice": 1, "camel": 1}       # the readiness POSTs
    try:
        wait_http(f"http://127.0.0.1:{iport}/readyz")
        wait_post(iport, ingest, "sluice-ingest")
        wait_post(cport, camel, "the Camel route")
        # Warm-up, both the same: partition leaders, and the JIT for Camel.
        for name, port in (("sluice", iport), ("camel", cport)):
            acked[name] += wrk(port, 8, 256)[2]
        s_rps, s_p99, ok = wrk(iport, seconds, 256)
        acked["sluice"] += ok
        c_rps, c_p99, ok = wrk(cport, seconds, 256)
        acked["camel"] += ok
        # One rate both can hold: half of the peer's maximum. Each side
        # runs twice in the order sluice, Camel, Camel, sluice, after a
        # pause for what the last closed-loop run left (the broker's and
        # the JVMs' collections), and keeps its better p99: whoever runs
        # right after the other's saturation is not the one that pays.
        rate = max(50, min(c_rps, s_rps) / 2)
        fixed = {"sluice": [], "camel": []}
        for name, port in (("sluice", iport), ("camel", cport),
                           ("camel", cport), ("sluice", iport)):
            time.sleep(3)
            r = loadgen(port, rate, seconds)
            acked[name] += r["ok"]
            fixed[name].append(r)
        s_fixed = min(fixed["sluice"], key=lambda r: r["p99"])
        c_fixed = min(fixed["camel"], key=lambda r: r["p99"])
        s_n = check_landed(brokers, s_topic, acked["sluice"], "sluice-ingest")
        c_n = check_landed(brokers, c_topic, acked["camel"], "the Camel route")
    finally:
        stop(ingest)
        stop(camel)
    print("peers, HTTP -> Kafka: same requests (bench/post.lua), same broker, same run")
    print(f"  sluice-ingest         {s_rps:10.0f} req/s  p99 {s_p99:8.2f} ms  (wrk, 256 connections)")
    print(f"  Camel platform-http   {c_rps:10.0f} req/s  p99 {c_p99:8.2f} ms")
    print(f"  ratio                 {s_rps / c_rps:10.2f}   (goal >= 3)")
    for name, key, r in (("sluice-ingest", "sluice", s_fixed), ("Camel route", "camel", c_fixed)):
        print(f"  {name:14} at {rate:6.0f}/s: achieved {r['rate']:7.0f}/s  p50 {r['p50']:7.2f} ms"
              f"  p99 {r['p99']:8.2f} ms  ok {r['ok']} other {r['other']}"
              f"  (better of p99s {', '.join('%.2f' % x['p99'] for x in fixed[key])})")
    print(f"  every 202 is in Kafka: sluice {acked['sluice']} answers, {s_n} records;"
          f" Camel {acked['camel']} answers, {c_n} records")
    row("ingest req/s vs Camel", s_rps, "req/s", "Camel platform-http->kafka", c_rps,
        s_rps / c_rps, ">= 3x the peer")
    row(f"ingest p99 at {rate:.0f}/s vs Camel", s_fixed["p99"], "ms",
        "Camel platform-http->kafka", c_fixed["p99"], c_fixed["p99"] / s_fixed["p99"],
        "> 1 (peer p99 / sluice p99)")


CONNECT_LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
"""

# The row as a Connect schema: the columns of `messages` that the worker
# writes (id and inserted_at are the table's defaults on both sides).
ROW_SCHEMA = {"type": "struct", "name": "sluice.bench.message", "optional": False, "fields": [
    {"field": "conversation_id", "type": "string", "optional": False},
    {"field": "external_event_id", "type": "string", "optional": False},
    {"field": "position", "type": "int32", "optional": False},
    {"field": "role", "type": "string", "optional": False},
    {"field": "content", "type": "string", "optional": False},
    {"field": "created_at", "type": "int64", "optional": False,
     "name": "org.apache.kafka.connect.data.Timestamp", "version": 1}]}
KEY_SCHEMA = {"type": "string", "optional": False}

ROWS_SQL = ("SELECT conversation_id, external_event_id, position, role, content, created_at"
            " FROM {table} WHERE conversation_id LIKE %s")
DIGEST_SQL = ("SELECT count(*), md5(string_agg(concat_ws(chr(31), conversation_id, external_event_id,"
              " position, role, content, extract(epoch FROM created_at)), chr(30)"
              " ORDER BY conversation_id, external_event_id)) FROM {table} WHERE conversation_id LIKE %s")


def bench_peer_worker(env, tmp, sluice, row):
    """`sluice` is bench_worker's result: the run's conversation prefix,
    its record count and bytes, and sluice-worker's rows/s."""
    import psycopg
    from confluent_kafka import Producer
    brokers, dsn = env["SLUICE_KAFKA_BROKERS"], env["SLUICE_POSTGRES_DSN"]
    base = fetch()
    like = sluice["prefix"] + "%"
    topic = f"bench-connect-{uuid.uuid4().hex[:8]}"
    create_topic(brokers, topic)
    with psycopg.connect(dsn, autocommit=True) as db:
        rows = db.execute(ROWS_SQL.format(table="messages"), (like,)).fetchall()
        want = db.execute(DIGEST_SQL.format(table="messages"), (like,)).fetchone()
        db.execute("DROP TABLE IF EXISTS peer_messages")
        db.execute("CREATE TABLE peer_messages (LIKE messages INCLUDING DEFAULTS"
                   " INCLUDING CONSTRAINTS INCLUDING INDEXES)")
    if len(rows) != sluice["rows"]:
        raise SystemExit(f"sluice-worker wrote {len(rows)} rows, expected {sluice['rows']}")
    # One record per row, keyed by conversation as the transcript records
    # are, so each conversation's rows share a partition.
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "acks": "all"})
    nbytes = 0
    key_env = {"schema": KEY_SCHEMA, "payload": None}
    val_env = {"schema": ROW_SCHEMA, "payload": None}
    for i, (cid, eid, pos, role, content, created) in enumerate(rows):
        key_env["payload"] = cid
        val_env["payload"] = {"conversation_id": cid, "external_event_id": eid, "position": pos,
                              "role": role, "content": content,
                              "created_at": int(created.timestamp() * 1000)}
        k, v = json.dumps(key_env).encode(), json.dumps(val_env).encode()
        nbytes += len(k) + len(v)
        p.produce(topic, key=k, value=v)
        if i % 1000 == 0:
            p.poll(0)
    if p.flush(120):
        raise SystemExit("could not produce the row records for Kafka Connect")

    cdir = os.path.join(tmp, "connect")
    os.makedirs(cdir, exist_ok=True)
    rest = free_port()
    pg = re.match(r"postgres(?:ql)?://([^@/]+)@([^:/]+):(\d+)/(\w+)", dsn)
    if not pg:
        raise SystemExit(f"cannot turn {dsn} into a JDBC URL")
    user, host, port, dbname = pg.groups()
    files = {
        "worker.properties": f"""bootstrap.servers={brokers}
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
offset.storage.file.filename={cdir}/offsets
offset.flush.interval.ms=1000
plugin.path={base}/connect/plugins
plugin.discovery=service_load
listeners=http://127.0.0.1:{rest}
consumer.max.poll.records=2000
""",
        "jdbc-sink.properties": f"""name=peer-jdbc-sink
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max=1
topics={topic}
connection.url=jdbc:postgresql://{host}:{port}/{dbname}
connection.username={user}
connection.password=
insert.mode=upsert
primary.key.mode=record_value
primary.key.fields=conversation_id,external_event_id
schema.evolution=none
collection.name.format=peer_messages
batch.size=2000
""",
        "log4j.properties": CONNECT_LOG4J.format(log=os.path.join(tmp, "connect.log")),
    }
    for name, text in files.items():
        with open(os.path.join(cdir, name), "w") as f:
            f.write(text)
    with psycopg.connect(dsn, autocommit=True) as db:
        id_base = db.execute("SELECT last_value FROM messages_id_seq").fetchone()[0]
    cenv = dict(env, CLASSPATH=f"{base}/connect/libs/*")
    connect = subprocess.Popen(
        [JAVA, *HEAP, f"-Dlog4j.configuration=file:{cdir}/log4j.properties",
         "org.apache.kafka.connect.cli.ConnectStandalone",
         f"{cdir}/worker.properties", f"{cdir}/jdbc-sink.properties"],
        env=cenv, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "connect.out"), "w"))
    t = time.perf_counter()
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            # From the first row to the last, as for sluice-worker: the JVM's
            # start and the group join do not count against the peer. As
            # for sluice-worker, progress is read cheaply (the highest id,
            # from the primary key's index; the rows take their ids from
            # messages_id_seq, one each, in one writer's order), not by a
            # count(*) over the growing table; an exact count confirms the
            # end.
            progress = "SELECT coalesce(max(id), 0) FROM peer_messages"
            first = None
            while True:
                n = max(0, db.execute(progress).fetchone()[0] - id_base)
                if n > 0 and first is None:
                    first = (time.perf_counter(), n)
                if n >= len(rows):
                    n = db.execute("SELECT count(*) FROM peer_messages").fetchone()[0]
                if n >= len(rows):
                    break
                if connect.poll() is not None:
                    raise SystemExit(f"Kafka Connect exited with {connect.returncode} at {n} rows"
                                     f" (see {tmp}/connect.log)")
                if time.perf_counter() - t > 600:
                    raise SystemExit(f"Kafka Connect stalled at {n} rows (see {tmp}/connect.log)")
                time.sleep(0.05)
            rate = (n - first[1]) / (time.perf_counter() - first[0])
            got = db.execute(DIGEST_SQL.format(table="peer_messages"), (like,)).fetchone()
            total = db.execute("SELECT count(*) FROM peer_messages").fetchone()[0]
            db.execute("DROP TABLE peer_messages")
    finally:
        stop(connect)
    if tuple(got) != tuple(want) or total != len(rows):
        raise SystemExit(f"Kafka Connect's rows differ from sluice-worker's: {got} vs {want}"
                         f" ({total} rows in peer_messages)")
    s_rate = sluice["rate"]
    print("peers, Kafka -> PostgreSQL: the same rows, same broker and database, same run")
    print(f"  sluice-worker                    {s_rate:10.0f} rows/s  ({sluice['records']} transcript"
          f" records, {sluice['bytes']} bytes)")
    print(f"  Kafka Connect + Debezium JDBC    {rate:10.0f} rows/s  ({len(rows)} row records,"
          f" {nbytes} bytes, upsert)")
    print(f"  ratio                            {s_rate / rate:10.2f}   (goal >= 3)")
    print(f"  both tables hold the same {len(rows)} rows (md5 {want[1]})")
    row("worker rows/s vs Kafka Connect", s_rate, "rows/s", "Connect+Debezium JDBC sink",
        rate, s_rate / rate, ">= 3x the peer")
