"""reszoo's commands: training, export and prediction (TensorFlow). Installed with reszoo as the
top-level package ``training``; ``reszoo_cli`` checks that this is the package it finds."""

RESZOO = True
