"""Models-from-code entry point: MLflow runs this file to get the pyfunc, so the
logged model holds no pickle at all (weights, config and normaliser are files)."""

import mlflow

from models.price_model import PriceForecaster

mlflow.models.set_model(PriceForecaster())
