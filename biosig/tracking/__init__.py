"""MLflow-facing code: run lifecycle, batched metrics, dataset logging, environment capture."""
