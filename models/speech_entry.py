"""Models-from-code entry point of the speech model (no pickle; see speech_pyfunc)."""

import mlflow

from models.speech_pyfunc import SpeechModel

mlflow.models.set_model(SpeechModel())
