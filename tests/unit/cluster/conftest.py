"""Fixtures of the cluster unit tests."""

from tests.unit.cluster.inproc import inproc  # noqa: F401
