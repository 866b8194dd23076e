"""The speech tasks: `speech-classify` (classify.py) and `speech-forecast` (forecast.py),
what both share (common.py), pretraining a classifier on the forecast objective
(pretrain.py) and training-time augmentation (augment.py)."""
