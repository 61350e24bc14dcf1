"""Weights references: where a version's files are, resolved on the worker only.

`package://<module>/<path>` points inside an installed Python package (how the bundled
models ship), `file:///<path>` at a local file or folder, `generated://tiny-stable-diffusion`,
`generated://tiny-vit-classifier` and `generated://tiny-vit-captioner` at small random models
built on first use (models/tiny_diffusion.py, models/tiny_vision.py). Nothing is ever
downloaded.
"""

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse


class WeightsNotFound(Exception):
    """The reference names nothing on this machine."""


def resolve(ref: str) -> Path:
    parsed = urlparse(ref)
    if parsed.scheme == "package":
        spec = importlib.util.find_spec(parsed.netloc)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsNotFound(f"package {parsed.netloc!r} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / parsed.path.lstrip("/")
    elif parsed.scheme == "file":
        path = Path(parsed.path)
    elif ref == "generated://tiny-stable-diffusion":
        from models import tiny_diffusion  # imports torch: only workers resolve weights

        path = tiny_diffusion.build(cache_dir() / f"tiny-stable-diffusion-{tiny_diffusion.VERSION}")
    elif ref in ("generated://tiny-vit-classifier", "generated://tiny-vit-captioner"):
        from models import tiny_vision

        name = parsed.netloc
        path = tiny_vision.build(
            cache_dir() / f"{name}-{tiny_vision.VERSION}", tiny_vision.BUILDERS[name]
        )
    else:
        raise WeightsNotFound(
            f"unsupported weights reference {ref!r}: use package://, file:// or generated://"
        )
    if not path.exists():
        raise WeightsNotFound(f"{ref} resolves to {path}, which does not exist")
    return path


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
