"""The FastAPI prediction API, the retraining worker, the CLI and the dashboard."""
