"""Integration tests run real ``tributary serve`` processes on loopback ports."""

from __future__ import annotations

import pytest

from tests.support.process import node_factory  # noqa: F401

pytestmark = pytest.mark.integration
