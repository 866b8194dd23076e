"""Models-from-code entry point of the spoken-word classifier (no pickle; see
speech_model)."""

import mlflow

from models.speech_model import SpeechClassifier

mlflow.models.set_model(SpeechClassifier())
