"""Shared fixtures: the real local broker and real databases (SQLite file, PostgreSQL).

PostgreSQL tests use ``STREAMREC_TEST_POSTGRES_URL`` (default: the local server at
127.0.0.1:5432, database ``test``). Without a reachable server they skip with the reason,
unless ``STREAMREC_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), which makes them fail instead.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from stream.broker import BrokerUnavailable, LocalBroker

PG_URL = os.environ.get(
    "STREAMREC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("STREAMREC_REQUIRE_POSTGRES") == "1"

# Property tests draw the same examples every run (a CI run once drew a case no local run
# had) and keep no example database in the tree; a test's own @settings inherit this.
settings.register_profile("streamrec", derandomize=True, database=None)
settings.load_profile("streamrec")


def _postgres_reason() -> str | None:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure means "no usable server here"
        return f"PostgreSQL at {PG_URL} is not reachable: {str(exc).splitlines()[0]}"
    return None


@pytest.fixture(scope="session")
def postgres_base_url() -> str:
    reason = _postgres_reason()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(f"{reason} (STREAMREC_REQUIRE_POSTGRES=1 makes this mandatory)")
        pytest.skip(reason)
    return PG_URL


@pytest.fixture
def postgres_url(postgres_base_url: str) -> Iterator[str]:
    """A URL whose tables live in a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in postgres_base_url else "?"
    yield f"{postgres_base_url}{sep}options=-csearch_path%3D{schema}"
    # A background thread of the test (an HTTP retrain, a server) may still be finishing a
    # write; DROP ... CASCADE then loses a deadlock to it, so retry after it settles.
    for attempt in range(5):
        try:
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            break
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """Each test using this runs twice: on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """The bundled Kafka-compatible broker on a free port, for the whole session."""
    try:
        local = LocalBroker().start()
    except BrokerUnavailable as exc:
        pytest.fail(f"the local broker is needed for integration tests: {exc}")
    yield local
    local.stop()


@pytest.fixture
def topic_name() -> str:
    return f"events-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _faiss_threads() -> Iterator[None]:
    """Give FAISS its thread count back after a test: an API app sets it to one for the
    whole process (store.ann.search_on_calling_threads), which would leave every later test's
    index builds single-threaded."""
    try:
        import faiss
    except ImportError:
        yield
        return
    before = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(before)
