"""Schemathesis against the node's own OpenAPI schema: generated requests (valid and invalid)
to every operation, and no answer is a 5xx. A short run here; ``just fuzz`` runs the CLI far longer.

Schemathesis' pytest plugin does not run under pytest 9 (it reaches into a private attribute),
so each operation's strategy is driven by hypothesis directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.support.process import NodeProcess

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("TRIBUTARY_FUZZ_EXAMPLES", "10"))


@pytest.fixture(scope="module")
def fuzzed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data: Path = tmp_path_factory.mktemp("fuzz")
    with NodeProcess(data, args=["--no-fsync", "--sql-timeout-s", "5", "--query-timeout-s", "5"], name="fuzz") as n:
        yield n


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_generated_request_gets_a_5xx(fuzzed_node: NodeProcess, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(fuzzed_node.url + "/schema/openapi.json", timeout=30)
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    for op in operations:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        try:
            check()
        except Unsatisfiable:  # no invalid request exists for an operation without parameters
            assert mode is GenerationMode.NEGATIVE, op.label
        except Exception as e:  # collect all operations' failures, then report them together
            failures.append(f"{op.label}: {type(e).__name__}: {str(e)[:1500]}")
        assert fuzzed_node.running, f"the node died fuzzing {op.label}:\n{fuzzed_node.log_tail()}"
    assert not failures, "\n\n".join(failures)
