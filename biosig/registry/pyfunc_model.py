"""MLflow models-from-code entry: the file MLflow stores with each fine-tuned pyfunc model."""

import mlflow

from biosig.registry.pyfunc import WindowClassifier

mlflow.models.set_model(WindowClassifier())
