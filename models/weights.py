"""Weights references: where a version's files are, resolved on the worker only.

`package://<module>/<path>` points inside an installed Python package (how the bundled
models ship), `file:///<path>` at a local file or folder, `generated://tiny-stable-diffusion`,
`generated://tiny-vit-classifier` and `generated://tiny-vit-captioner` at small random models
built on first use (models/tiny_diffusion.py, models/tiny_vision.py). Nothing is ever
downloaded. Built and converted weights are kept in models/weight_cache.py's folder, which the
builders use without importing this module (so neither imports the other).
"""

import importlib.util
from pathlib import Path
from urllib.parse import urlparse

from models.weight_cache import cache_dir


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
