"""Models-from-code entry point of the speech classifier (no pickle; see speech_pyfunc)."""

import mlflow

from models.speech_pyfunc import SpeechClassifier

mlflow.models.set_model(SpeechClassifier())
