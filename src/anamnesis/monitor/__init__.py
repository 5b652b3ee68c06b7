"""Drift checks with Evidently and the retrain decision.

monitor.data (WindowData, window_from_records), monitor.reference (ReferenceProfile, ReferenceCache),
monitor.checks (run_check), monitor.report (render_html), monitor.policy (decide_update) and
monitor.runner (run_and_store); configs in monitor.config, results in monitor.result. See
docs/monitor.md. Nothing is imported here, so `import monitor.policy` stays light.
"""
