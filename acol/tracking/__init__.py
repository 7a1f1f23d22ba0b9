"""MLflow runs, the model registry and the MLflow model format; the DVC metrics the stages write."""
