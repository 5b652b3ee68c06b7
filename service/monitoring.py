"""Drift checks as worker jobs (filled in with the monitor)."""
