"""Models-from-code entry point of the speech frame forecaster (no pickle; see
speech_model)."""

import mlflow

from models.speech_model import SpeechForecaster

mlflow.models.set_model(SpeechForecaster())
