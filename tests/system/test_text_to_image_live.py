"""Text to image for real: the API, a Celery worker process building and running the tiny
Stable Diffusion pipeline, and the PNG files it stored, fetched back through the API."""

import io

import pytest
from PIL import Image

from tests.support.helpers import register_and_login
from tests.support.live import LiveStack
from tests.support.processes import wait_for_prediction

pytestmark = pytest.mark.slow


def test_an_image_prediction_returns_png_urls_that_open_as_given_and_plain_only_to_its_owner(
    live: LiveStack,
) -> None:
    response = live.client.post(
        "/v1/predictions",
        json={
            "model": "quern/tiny-stable-diffusion",
            "input": {"prompt": "a red barn", "width": 96, "num_outputs": 2, "seed": 1},
        },
        headers=live.headers | {"Prefer": "wait=60"},
        timeout=90,
    )
    assert response.status_code == 201, response.text
    done = response.json()
    if done["status"] not in ("succeeded", "failed", "canceled", "aborted"):
        url = f"/v1/predictions/{done['id']}"  # the first run builds the pipeline
        done = wait_for_prediction(live.client, url, live.headers, timeout=240)
    assert done["status"] == "succeeded", done
    assert done["input"]["height"] == 64 and done["input"]["num_inference_steps"] == 4
    urls = done["output"]
    assert isinstance(urls, list) and len(urls) == 2 and len(set(urls)) == 2
    stranger = register_and_login(live.client)
    for url in urls:
        plain, signed = url.split("?")  # signed as the API answers (db/signed_urls.py)
        assert plain.startswith(f"{live.base_url}/v1/files/")  # the workers' QUERN_PUBLIC_URL
        assert signed.startswith("expires=") and "&signature=" in signed
        fetched = live.client.get(url)  # as given: no token needed
        assert fetched.status_code == 200, fetched.text
        assert fetched.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(fetched.content), formats=["PNG"])
        assert image.size == (96, 64)
        assert live.client.get(plain, headers=live.headers).content == fetched.content
        assert live.client.get(plain, headers=stranger).status_code == 404
        assert live.client.get(plain).status_code == 401
