"""Shared test set-up. Kept free of torch so environments without it (the pose env) can run tests."""

import os

# hub look-ups otherwise retry for ~25 s before failing; every model a test uses is built locally
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
