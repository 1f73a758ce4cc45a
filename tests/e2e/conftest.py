"""E2e fixtures come from tests/conftest_cluster.py: the session control plane of tests/cluster."""
