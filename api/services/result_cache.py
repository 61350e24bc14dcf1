"""The result cache: a repeat of a deterministic input is answered with an earlier output.

Entries are the predictions themselves: a prediction created with a cache key (SHA-256 of its
validated input in canonical form: defaults filled in, keys sorted) is an entry once it has
succeeded, for its version's `ttl_s`. The create statement looks one up and, on a hit, inserts
the new prediction already `succeeded` with that output (db/repositories/predictions_async.py):
one round trip either way, no second store to keep in step, and nothing canceled or failed is
ever served. Outputs that hold files are never served (a file is its owner's). Identical inputs
that meet in one batch are computed once (workers/batch_run.py).
"""

from dataclasses import dataclass
from typing import Any

from db.file_inputs import fixed_content
from db.repositories.predictions_async import CacheLookup, ManyCacheLookup
from models.registry import cache_key


@dataclass(frozen=True)
class CacheRule:
    """A caching version's settings (models/registry.py says which inputs are deterministic)."""

    model_type: str
    ttl_s: int
    shared: bool  # answer one user with another's output


def lookup(
    rule: CacheRule | None, input: dict[str, Any], owner_id: str, file_fields: tuple[str, ...]
) -> CacheLookup | None:
    """The lookup for this validated input, or None when it is not cached (or names a file by
    an http(s) URL, whose bytes may change)."""
    if rule is None or not fixed_content(input, file_fields):
        return None
    key = cache_key(rule.model_type, input)
    return None if key is None else CacheLookup(key, rule.ttl_s, None if rule.shared else owner_id)


def lookup_many(
    rule: CacheRule | None, inputs: list[dict[str, Any]], owner_id: str
) -> ManyCacheLookup | None:
    """`lookup` of several inputs (with no file fields: the embeddings endpoint's texts); None
    when none of them is cached."""
    found = [lookup(rule, input, owner_id, ()) for input in inputs]
    if rule is None or all(item is None for item in found):
        return None
    keys = [None if item is None else item.key for item in found]
    return ManyCacheLookup(keys, rule.ttl_s, None if rule.shared else owner_id)
