"""End-to-end tier: a user's path with the Helm chart on the real control plane."""
