"""Signed URLs: `urls.stream` and file outputs that open without an Authorization header, as
Replicate's do (its JavaScript client fetches both with a bare `fetch`).

A signed URL is the plain one plus `?expires=<unix seconds>&signature=<base64url>`: an
HMAC-SHA256 of what it grants, under a key derived from QUERN_SIGNED_URL_SECRET with a purpose
label. What it grants:

- `stream:<prediction id>:<expires>`: that prediction's event stream;
- `file:<file id>:<prediction id>:<expires>`: that file, as an output of that prediction. A
  prediction's output is whatever its model returned, and a model could return the URL of a
  file that is not its own (another user's); every file URL of an output is signed, so the
  signature names the prediction it was found in, and the API serves the file only when its
  row says it belongs to that prediction (the row it reads anyway: no extra query).

URLs are signed when a prediction is serialized, never stored: in the API's answers and the
webhook bodies (common/prediction_object.py) and in the stream's `output` events
(api/services/streams.py). Outputs in PostgreSQL keep the plain `.../v1/files/{id}` URLs (a
stored URL could not carry an expiry that means anything), which still open with a token, and
so do the plain stream URLs. The expiry is rounded up to a whole step (an hour, or the TTL when
shorter), so a prediction serializes the same within it: a URL lasts from TTL to TTL + step.

In `db` because the API checks signatures and the workers sign webhook bodies: both read this
one setting. The workers must not hold the JWT secret (they could mint any user's token), so
the key is not derived from it. Without a secret nothing is signed and nothing verifies: the
URLs need an Authorization header, as before.
"""

import base64
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.secret_setting import EMPTY_IS_UNSET, at_least

log = logging.getLogger(__name__)

MIN_SECRET_CHARS = 32
KEY_LABEL = b"quern signed URLs v1"
MAX_STEP_S = 3600
# A file output's URL as workers write it (`{QUERN_PUBLIC_URL}/v1/files/{id}`), whatever the
# host: the signature binds the file to the prediction, so matching more hosts grants nothing.
FILE_URL = re.compile(r"https?://[^?#\s]*/v1/files/([a-z2-7]{26})")
EXPIRES = re.compile(r"[0-9]{1,12}")
# What an output is made of: scalars hold no URL, the rest may.
_SCALARS = frozenset((float, int, bool, type(None)))
_CONTAINERS = (str, list, dict)


class SignedUrlSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUERN_SIGNED_URL_", extra="ignore")

    # The API and every worker that sends webhooks must share it. Unset: no signed URLs.
    secret: Annotated[
        SecretStr | None, EMPTY_IS_UNSET, at_least("QUERN_SIGNED_URL_SECRET", MIN_SECRET_CHARS)
    ] = None
    # How long a signed URL works at least (then up to an hour more, see above).
    file_ttl_s: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)
    stream_ttl_s: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)


@dataclass(frozen=True)
class UrlSigner:
    key: bytes | None  # None: signing is off
    file_ttl_s: int
    stream_ttl_s: int

    @classmethod
    def from_settings(cls, settings: SignedUrlSettings) -> "UrlSigner":
        key = None
        if settings.secret is not None:
            secret = settings.secret.get_secret_value().encode()
            key = hmac.new(secret, KEY_LABEL, hashlib.sha256).digest()
        return cls(key, settings.file_ttl_s, settings.stream_ttl_s)

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def stream_url(self, url: str, prediction_id: str, now: float) -> str:
        """`url` (the prediction's plain stream URL), signed for `prediction_id`."""
        return self._signed(url, f"stream:{prediction_id}", self.stream_ttl_s, now)

    def sign_files(self, output: Any, prediction_id: str, now: float) -> Any:
        """`output` with every file URL in it signed as an output of `prediction_id`; the same
        object when there is none (nothing is copied for an output without files)."""
        if self.key is None:
            return output
        if isinstance(output, str):
            match = FILE_URL.fullmatch(output)
            if match is None:
                return output
            message = f"file:{match[1]}:{prediction_id}"
            return self._signed(output, message, self.file_ttl_s, now)
        if isinstance(output, list):
            if _SCALARS.issuperset(map(type, output)):  # numbers (embeddings): at C speed
                return output
            copied: list[Any] | None = None
            for index, item in enumerate(output):
                if isinstance(item, _CONTAINERS):
                    signed = self.sign_files(item, prediction_id, now)
                    if signed is not item:
                        copied = copied or list(output)
                        copied[index] = signed
            return output if copied is None else copied
        if isinstance(output, dict):
            signed_values = {
                key: self.sign_files(v, prediction_id, now) for key, v in output.items()
            }
            changed = any(signed_values[key] is not v for key, v in output.items())
            return signed_values if changed else output
        return output

    def check_stream(self, prediction_id: str, expires: str, signature: str) -> bool:
        return self._check(f"stream:{prediction_id}", expires, signature)

    def check_file(self, file_id: str, prediction_id: str, expires: str, signature: str) -> bool:
        """Whether the signature grants file `file_id` as an output of `prediction_id` (the
        prediction the file's row names)."""
        return self._check(f"file:{file_id}:{prediction_id}", expires, signature)

    def _signed(self, url: str, grant: str, ttl_s: int, now: float) -> str:
        if self.key is None:
            return url
        step = min(ttl_s, MAX_STEP_S)
        expires = (int(now) + ttl_s) // step * step + step
        return f"{url}?expires={expires}&signature={_signature(self.key, grant, expires)}"

    def _check(self, grant: str, expires: str, signature: str) -> bool:
        """Constant-time; False without a key, for a malformed or past expiry, or a signature
        of anything else."""
        if self.key is None or EXPIRES.fullmatch(expires) is None:
            return False
        if int(expires) <= time.time():
            return False
        expected = _signature(self.key, grant, int(expires)).encode()
        return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


def _signature(key: bytes, grant: str, expires: int) -> str:
    digest = hmac.new(key, f"{grant}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@lru_cache
def get_url_signer() -> UrlSigner:
    signer = UrlSigner.from_settings(SignedUrlSettings())
    if not signer.enabled:
        log.warning(
            "QUERN_SIGNED_URL_SECRET is not set: urls.stream and file URLs are not signed and "
            "need an Authorization header (Replicate's JavaScript client cannot open them)"
        )
    return signer
