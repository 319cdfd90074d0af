"""schemathesis against the served OpenAPI schema (a bounded number of generated requests per
operation, over real HTTP; fake backend): no 5xx, every status, content type and body as the schema
documents it, and no exception text or traceback in any response."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (installed with schemathesis)

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from tests.fakes import FakeBackend, serve_engine  # noqa: E402

# Schema-level checks. (schemathesis's "positive data acceptance" is left out: a schema cannot say
# "a base64 string of a decodable image", so schema-valid random strings are rightly 422.)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 40


def test_every_operation_conforms_to_the_served_schema():
    with serve_engine(FakeBackend(), max_client_batch_size=8) as url:
        schema = schemathesis.openapi.from_url(url + "/docs/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/embed", "/v1/embeddings", "/health", "/info", "/metrics"}
        for operation in operations:
            check_operation(operation)


def check_operation(operation) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def conforms(case) -> None:
        response = case.call(timeout=30)
        assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"
        assert "Traceback" not in response.text and 'File "' not in response.text
        case.validate_response(response, checks=CHECKS)

    conforms()
