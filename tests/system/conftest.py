# System tests: start the real sluice binaries against a private PostgreSQL,
# Redis and Kafka (pgbouncer's way).  Fixtures only: what they build, and
# what the tests import, is in harness.py.
#
# - `services` (session): deploy/services.sh start DIR, once per session;
#   stopped at the end.  Set SLUICE_TEST_SERVICES_DIR to a directory already
#   holding a running set (services.env) to reuse it and leave it running.
# - `pipeline` (per test): a unique topic, group id and conversation-id prefix;
#   writes configs and starts daemons on request; on teardown sends SIGTERM,
#   requires exit code 0 and fails if a log holds a crash or sanitizer report.
# - `leadstub`, `llm`: the lead-context source and the model server the
#   campaign tests talk to, on free loopback ports.
#
# The binaries come from $SLUICE_BUILD_DIR (default <repo>/build).

import pytest

# The harness's asserts report their operands, as a conftest's do.
pytest.register_assert_rewrite("harness")

from harness import Pipeline, running_services  # noqa: E402


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    with running_services(tmp_path_factory) as s:
        yield s


@pytest.fixture
def pipeline(request, services, tmp_path):
    if services.broken:
        pytest.fail("an earlier test left the services down:\n"
                    + services.broken, pytrace=False)
    p = Pipeline(request, services, tmp_path)
    yield p
    problems = p.check_daemons()
    if problems:
        pytest.fail("daemon teardown:\n\n" + "\n\n".join(problems),
                    pytrace=False)


# ---------------------------------------------------------------- campaigns

@pytest.fixture
def leadstub():
    """A lead-context HTTP source (tests/system/leadstub.py) on a free
    loopback port: GET /leads/{lead_id}; stopped after the test."""
    from leadstub import LeadStub
    stub = LeadStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def llm():
    """An OpenAI-compatible model server (llmstub.py) that wants
    compose_util.KEY; stopped after the test."""
    import llmstub
    from compose_util import KEY
    stub = llmstub.LLMStub(api_key=KEY).start()
    yield stub
    stub.stop()
