"""Hyper-parameter searches (Optuna) whose trials are nested MLflow runs."""
