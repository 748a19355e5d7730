"""The engine: data, models, training, evaluation and prediction. Imports only speed and settings."""
