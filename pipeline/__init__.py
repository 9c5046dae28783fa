"""Orchestration of the experiment pipeline: Ray execution, MLflow tracking, reports, tuning."""
