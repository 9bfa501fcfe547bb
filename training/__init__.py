"""reszoo's absl-flag commands (TensorFlow): train, export, predict and validate, each a light
module of flags and a heavy body, above ``training.common``, what they share (``reszoo-serve`` is
the package ``serving``).
Installed with reszoo as the top-level package ``training``; ``reszoo_cli`` checks that this is
the package it finds. Importing it quiets TensorFlow's C++ start-up log (``TF_CPP_MIN_LOG_LEVEL``
2, unless set)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines, unless asked for

RESZOO = True
