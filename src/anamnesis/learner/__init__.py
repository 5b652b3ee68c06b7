"""Incremental fine-tuning with replay and EWC, evaluation on every past period, the promotion gate."""
