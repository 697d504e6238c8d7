"""biosig: MLflow-centric tracking and registry for biosignal foundation models."""

__version__ = "0.1.0"
