"""``recurnet-hand``: train, evaluate, predict, profile and render synthetic hands from the command line.

Each command is a thin layer over a library function
(:func:`recurnet_hand.train.train`, :func:`recurnet_hand.inference.evaluate_model`, ...).
Errors from bad input end the command with a one-line message and exit code 1;
``recurnet-hand --debug <command>`` shows the traceback instead.
"""

from .app import app, main

__all__ = ["app", "main"]
