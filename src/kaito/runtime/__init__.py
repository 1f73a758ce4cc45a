"""Processes that run inside pods or locally: inference server, tuning job (no operator imports)."""
