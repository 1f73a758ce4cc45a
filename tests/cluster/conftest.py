"""Cluster-tier fixtures are in tests/conftest_cluster.py, loaded once as a plugin for all tiers."""

from tests.conftest_cluster import Kubectl

__all__ = ["Kubectl"]
