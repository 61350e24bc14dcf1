"""db/signed_urls.py: what a signature grants, for how long, and that it grants nothing else."""

import time
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from db.ids import new_id
from db.signed_urls import SignedUrlSettings, UrlSigner, get_url_signer

SECRET = "s" * 32
NOW = 1_700_000_000.0


def signer(secret: str | None = SECRET, **ttls: int) -> UrlSigner:
    return UrlSigner.from_settings(SignedUrlSettings.model_validate({"secret": secret, **ttls}))


def query(url: str) -> tuple[str, str, str]:
    """(the URL without its query, expires, signature)"""
    parts = urlsplit(url)
    params = parse_qs(parts.query, strict_parsing=True)
    assert sorted(params) == ["expires", "signature"]
    return url.split("?")[0], params["expires"][0], params["signature"][0]


def test_a_stream_url_grants_its_prediction_until_it_expires() -> None:
    prediction_id, plain = new_id(), "http://api/v1/predictions/x/stream"
    url, expires, signature = query(signer().stream_url(plain, prediction_id, time.time()))
    assert url == plain and len(signature) == 43  # 256 bits, base64url without padding
    assert signer().check_stream(prediction_id, expires, signature)
    assert not signer().check_stream(new_id(), expires, signature)  # another prediction's
    assert not signer().check_stream(prediction_id, str(int(expires) + 1), signature)
    assert not signer().check_stream(prediction_id, expires, signature[:-1] + "A")
    assert not signer(SECRET + "!").check_stream(prediction_id, expires, signature)
    # a stream's signature is not a file's, nor the other way round
    assert not signer().check_file(prediction_id, prediction_id, expires, signature)


def test_expired_and_malformed_signatures_never_verify() -> None:
    prediction_id = new_id()
    _, expires, signature = query(signer().stream_url("u", prediction_id, NOW))  # in 2023
    assert not signer().check_stream(prediction_id, expires, signature)
    fullwidth = "\uff11\uff12\uff13"
    for bad_expires in ("", "-1", "1e9", " 1", "9" * 13, fullwidth):
        assert not signer().check_stream(prediction_id, bad_expires, signature)
    _, expires, signature = query(signer().stream_url("u", prediction_id, time.time()))
    for bad_signature in ("", "é" * 43, signature + "=", "\x00"):
        assert not signer().check_stream(prediction_id, expires, bad_signature)


def test_the_expiry_is_the_ttl_rounded_up_to_the_hour_so_urls_are_stable_within_it() -> None:
    step = 3600
    for ttl in (3600, 86400, 7 * 86400):
        for now in (NOW, NOW + 1, NOW + 1799.5):
            _, expires, _ = query(signer(stream_ttl_s=ttl).stream_url("u", "p", now))
            assert int(expires) % step == 0
            assert now + ttl < int(expires) <= now + ttl + step
    _, expires, _ = query(signer(stream_ttl_s=600).stream_url("u", "p", NOW))
    assert NOW + 600 < int(expires) <= NOW + 1200  # a TTL under an hour is its own step
    first = signer().stream_url("u", "p", 36000.0)
    assert signer().stream_url("u", "p", 36000.0 + 3599) == first


def test_file_urls_in_an_output_are_signed_for_the_prediction_they_are_found_in() -> None:
    prediction_id, file_ids = new_id(), [new_id() for _ in range(3)]
    urls = [f"http://127.0.0.1:8000/v1/files/{file_id}" for file_id in file_ids]
    output = {"images": urls[:2], "nested": [[1.5, {"cover": urls[2]}]], "n": 2}
    signed = signer().sign_files(output, prediction_id, time.time())
    found = [*signed["images"], signed["nested"][0][1]["cover"]]
    for file_id, plain, url in zip(file_ids, urls, found, strict=True):
        base, expires, signature = query(url)
        assert base == plain
        assert signer().check_file(file_id, prediction_id, expires, signature)
        # valid only as an output of this prediction: a model that printed another
        # prediction's file URL gets a signature the API refuses for that file
        assert not signer().check_file(file_id, new_id(), expires, signature)
        assert not signer().check_file(new_id(), prediction_id, expires, signature)
    assert signed["n"] == 2 and signed["nested"][0][0] == 1.5
    # the stored output is left as it was
    assert output == {"images": urls[:2], "nested": [[1.5, {"cover": urls[2]}]], "n": 2}


def test_outputs_without_file_urls_come_back_as_the_same_object() -> None:
    embedding = [0.25] * 384
    for output in (embedding, "Blue.", {"text": "see /v1/files/x"}, None, 3, [[1, 2]], []):
        assert signer().sign_files(output, "p", NOW) is output
    not_a_file_url = [
        "http://h/v1/files/" + "A" * 26,  # not an id
        "http://h/v1/files/" + new_id() + "/x",
        "http://h/v1/files/" + new_id() + "?expires=1",
        "ftp://h/v1/files/" + new_id(),
        "see http://h/v1/files/" + new_id(),
    ]
    assert signer().sign_files(not_a_file_url, "p", NOW) is not_a_file_url


def test_without_a_secret_nothing_is_signed_and_nothing_verifies() -> None:
    off = signer(None)
    assert not off.enabled and not signer("").enabled
    url = "http://h/v1/files/" + new_id()
    assert off.sign_files([url], "p", NOW) == [url]
    assert off.stream_url("http://h/s", "p", NOW) == "http://h/s"
    _, expires, signature = query(signer().stream_url("u", "p", time.time()))
    assert not off.check_stream("p", expires, signature)


def test_a_short_secret_or_ttl_is_refused() -> None:
    with pytest.raises(ValidationError, match="QUERN_SIGNED_URL_SECRET"):
        SignedUrlSettings.model_validate({"secret": "short"})
    with pytest.raises(ValidationError):
        SignedUrlSettings.model_validate({"file_ttl_s": 10})


def test_the_tests_sign() -> None:
    """tests/conftest.py sets QUERN_SIGNED_URL_SECRET, for the API and the live workers."""
    assert get_url_signer().enabled
