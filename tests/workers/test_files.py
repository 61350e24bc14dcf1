"""File outputs as the worker records them: File rows of the prediction's owner, URLs in the
output. Real rows in PostgreSQL and real batches; only the model is a stand-in."""

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from db.repositories import predictions
from db.repositories.predictions import Claim
from db.session import session_scope
from db.tables import File, Prediction, PredictionStatus
from models.base import FileOutput
from tests.support.helpers import create_prediction_row, create_version
from tests.workers.stubs import Recording, StandInRuntime, run_together
from workers import files
from workers.settings import get_worker_settings

PNG = FileOutput(b"\x89PNG pretend", "image/png")
URL = f"{get_worker_settings().public_url}/v1/files/"


class Draws(Recording):
    """Each text becomes a list of one file holding its bytes (and 'nan' adds an unstorable NaN)."""

    def embed(self, text: str) -> Any:
        drawn: list[Any] = [FileOutput(text.encode(), "image/png")]
        return [*drawn, float("nan")] if text == "nan" else drawn


def claimed(prediction_id: str) -> Claim:
    with session_scope() as session:
        (claim,) = predictions.claim(session, ids=[prediction_id], lease_s=60)
    return claim


def files_of(prediction_id: str) -> list[File]:
    with session_scope() as session:
        query = select(File).where(File.prediction_id == prediction_id).order_by(File.created_at)
        return list(session.scalars(query))


def owner_of(prediction_id: str) -> str:
    with session_scope() as session:
        prediction = session.get(Prediction, prediction_id)
        assert prediction is not None
        return prediction.owner_id


def test_every_file_output_becomes_a_file_of_the_owner_and_its_url_in_place() -> None:
    prediction_id = create_prediction_row()
    claim = claimed(prediction_id)
    jpeg = FileOutput(b"\xff\xd8 pretend", "image/jpeg")
    with session_scope() as session:
        output, error = files.store(
            session, claim=claim, output={"images": [PNG, jpeg], "seed": 3, "thumb": (PNG,)}
        )
    assert error is None and output["seed"] == 3
    urls = [*output["images"], *output["thumb"]]
    assert len(output["images"]) == 2 and len(set(urls)) == 3
    assert all(url.startswith(URL) for url in urls)
    stored = {f.id: f for f in files_of(prediction_id)}
    assert set(stored) == {url.removeprefix(URL) for url in urls}
    for url, given in zip(urls, [PNG, jpeg, PNG], strict=True):
        row = stored[url.removeprefix(URL)]
        assert (row.data, row.content_type, row.size) == (
            given.data, given.content_type, len(given.data),
        )  # fmt: skip
        assert row.sha256 == hashlib.sha256(given.data).hexdigest()
        assert row.owner_id == claim.owner_id == owner_of(prediction_id)


def test_an_output_without_files_is_returned_as_is() -> None:
    claim = claimed(create_prediction_row())
    output = [0.5, {"a": "b"}]
    with session_scope() as session:
        assert files.store(session, claim=claim, output=output) == (output, None)
    assert files_of(claim.id) == []


def test_files_over_the_size_limit_fail_the_prediction_and_store_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_worker_settings(), "max_output_file_bytes", 2 * len(PNG.data) - 1)
    claim = claimed(create_prediction_row())
    with session_scope() as session:
        output, error = files.store(session, claim=claim, output=[PNG, PNG])
    assert output is None and error is not None and "the limit is" in error
    assert files_of(claim.id) == []


def test_a_bad_content_type_fails_the_prediction_and_stores_nothing() -> None:
    claim = claimed(create_prediction_row())
    with session_scope() as session:
        output, error = files.store(
            session, claim=claim, output=[FileOutput(b"x", "image/png\r\nSet-Cookie: a=b")]
        )
    assert output is None and error is not None and "content type" in error
    assert files_of(claim.id) == []


def test_a_prediction_canceled_before_its_outcome_is_recorded_gets_no_files() -> None:
    claim = claimed(create_prediction_row())
    with session_scope() as session:
        predictions.update_status(
            session, id=claim.id, from_statuses=(PredictionStatus.PROCESSING,),
            status=PredictionStatus.CANCELED,
        )  # fmt: skip
    with session_scope() as session:
        output, error = files.store(session, claim=claim, output=[PNG])
    assert error is None and output[0].startswith(URL)  # discarded by the caller
    assert files_of(claim.id) == []


def test_a_batch_stores_urls_in_each_output_and_files_only_for_those_that_succeed(
    runtime: StandInRuntime,
) -> None:
    runtime.use(Draws)
    version = create_version(max_batch_size=4, max_batch_wait_ms=300)
    ids = [create_prediction_row(version, text=text) for text in ("one", "nan", "three")]
    one, nan, three = run_together(runtime, version, ids)
    for done, text in ((one, "one"), (three, "three")):
        assert done.status == "succeeded" and isinstance(done.output, list), done.error
        (url,) = done.output
        (row,) = files_of(done.id)
        assert url == URL + row.id and row.data == text.encode() and row.owner_id == done.owner_id
    assert nan.status == "failed" and "NaN" in (nan.error or "") and nan.output is None
    assert files_of(nan.id) == []


class Arrays(Recording):
    """Outputs numpy values, as the embeddings model does ('nan' adds a NaN, 'scalar' is one
    numpy number, 'strings' an array of text)."""

    def embed(self, text: str) -> Any:
        if text == "scalar":
            return np.float32(0.5)
        if text == "strings":
            return np.array(["a", "b"])
        values = np.array([0.1, -0.25, 1e-7], dtype=np.float32)
        return np.append(values, np.float32("nan")) if text == "nan" else values


def test_a_float32_array_is_written_in_its_shortest_exact_form() -> None:
    values = np.array([[0.1, -0.25], [1e-7, 3.4028235e38]], dtype=np.float32)
    text = files.encode(values)
    assert text == "[[0.1,-0.25],[1e-7,3.4028235e+38]]"
    assert np.array_equal(np.array(json.loads(text), dtype=np.float32), values)  # exact
    assert files.encode(np.arange(3)[::2]) == "[0,2]"  # not contiguous: copied first
    assert files.encode(np.array([1.0, np.inf])) is None  # PostgreSQL refuses: the slow path
    assert files.encode(np.array(["a"])) is None


def test_numpy_outputs_are_stored_and_a_nan_in_one_fails_only_that_prediction(
    runtime: StandInRuntime,
) -> None:
    runtime.use(Arrays)
    version = create_version(max_batch_size=4, max_batch_wait_ms=300)
    texts = ("array", "nan", "scalar", "strings")
    array, nan, scalar, strings = run_together(
        runtime, version, [create_prediction_row(version, text=text) for text in texts]
    )
    assert (array.status, array.output) == ("succeeded", [0.1, -0.25, 1e-7])
    assert nan.status == "failed" and "NaN" in (nan.error or "")
    assert (scalar.status, scalar.output) == ("succeeded", 0.5)
    assert (strings.status, strings.output) == ("succeeded", ["a", "b"])
