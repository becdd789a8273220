"""List endpoints answer with one query whatever the page holds (no query per row), and an
authenticated request adds none: the key comes from the process's key cache and usage and
last-use times are written behind the request."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

#: Queries each list needs: its rows (the model list also reads the base models, a second table).
LISTS = {
    "/v1/fine_tuning/jobs": 1,
    "/v1/files": 1,
    "/v1/models": 2,
    "/v1/deployments": 1,
    "/v1/batches": 1,
    "/v1/verticals": 1,
    "/v1/api_keys": 1,
}


def data_queries(queries: list[dict]) -> list[str]:
    """What the view asked for; rate-limit bookkeeping (a lease claimed once per window) aside."""
    return [q["sql"] for q in queries if "ratelimitwindow" not in q["sql"] and "SAVEPOINT" not in q["sql"]]


@pytest.fixture
def filled(api, acme, upload, create_job):
    for _ in range(3):
        file_id = upload(acme).json()["id"]
        assert create_job(acme, file_id).status_code == 200
    for name in ("a", "b"):
        made = api.post("/v1/api_keys", {"name": name, "role": "member"}, format="json", **acme.headers)
        assert made.status_code == 200
    return acme


@pytest.mark.parametrize(("path", "expected"), LISTS.items())
def test_a_list_is_one_query_however_many_rows(api, filled, path, expected):
    assert api.get(path, **filled.headers).status_code == 200  # the key is cached now
    with CaptureQueriesContext(connection) as queries:
        answered = api.get(path, **filled.headers)
    assert answered.status_code == 200
    assert len(data_queries(queries.captured_queries)) == expected, data_queries(queries.captured_queries)
