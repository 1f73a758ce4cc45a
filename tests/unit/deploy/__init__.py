"""Unit tests of the deployment artefacts: Helm chart, generated files, RBAC, images."""
