"""The registry through a real worker: a version registered after the worker started is
served without a restart, including a custom predictor loaded by its class path."""

from typing import Any

import pytest

from tests.support.helpers import new_username, register_admin
from tests.support.live import LiveStack

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "default": "quern"}},
    "additionalProperties": False,
}


def add_version(live: LiveStack, admin: dict[str, str], **version: Any) -> str:
    """A new model with this one version; returns `owner/name`."""
    name = new_username()
    response = live.client.post("/v1/models", json={"name": name}, headers=admin)
    assert response.status_code == 201, response.text
    ref = f"{response.json()['owner']}/{name}"
    body = {"weights": "package://tests", "input_schema": SCHEMA} | version
    response = live.client.post(f"/v1/models/{ref}/versions", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return ref


def predict(live: LiveStack, model: str, input: dict[str, Any]) -> dict[str, Any]:
    response = live.client.post(
        "/v1/predictions",
        json={"model": model, "input": input},
        headers=live.headers | {"Prefer": "wait=60"},
        timeout=90,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_custom_version_registered_now_is_served_without_restarting_the_worker(
    live: LiveStack,
) -> None:
    admin = register_admin(live.client)
    model = add_version(
        live, admin, model_type="custom", predictor="tests.support.custom_predictors:Reverse"
    )
    done = predict(live, model, {"text": "batch me"})
    assert done["status"] == "succeeded", done
    assert done["output"] == {"text": "em hctab", "device": "cpu", "batch": 1}
    assert done["input"] == {"text": "batch me"}
    defaulted = predict(live, model, {})
    assert defaulted["output"]["text"] == "nreuq"


def test_a_custom_class_the_worker_cannot_import_fails_the_prediction_clearly(
    live: LiveStack,
) -> None:
    admin = register_admin(live.client)
    model = add_version(
        live, admin, model_type="custom", predictor="tests.support.custom_predictors:Missing"
    )
    done = predict(live, model, {"text": "x"})
    assert done["status"] == "failed", done
    assert "cannot load tests.support.custom_predictors:Missing" in done["error"]
