"""Where built and converted weights are kept between processes, and how a folder is built
there once: the generated test models (models/tiny_diffusion.py, models/tiny_vision.py) and
converted GGUF files (models/text_generation.py) build through it, and models/weights.py
resolves references to what it holds.
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """Where converted weights are kept between processes (QUERN_MODEL_CACHE_DIR)."""
    default = Path.home() / ".cache" / "quern" / "models"
    return Path(os.environ.get("QUERN_MODEL_CACHE_DIR", default))


def build_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """`target`, made by `build(folder)` unless it holds `marker` already (converted or
    generated weights). Built beside it and renamed into place, so a concurrent or killed
    builder never leaves half a folder: the first rename wins, the others' copies are dropped."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        build(staging)
        staging.rename(target)
    except OSError:
        if not (target / marker).exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
