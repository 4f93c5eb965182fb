"""``python -m recurnet_hand.cli`` (e.g. under ``torchrun``)."""

from .app import main

main()
