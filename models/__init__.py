"""ML models only: the Predictor protocol, one module per model type, and the registry.

Importing this package does not import torch; the model-type modules do.
"""

import os

# Weights come from installed packages or local files: never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Progress bars are noise in worker logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
