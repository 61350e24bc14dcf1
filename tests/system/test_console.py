"""The web console (`/console`) in a real headless browser: Debian's Chromium driven by
Playwright, against the live stack (a uvicorn API and a real worker running the built-in
models). Nothing is downloaded: Playwright launches the system's Chromium.

QUERN_CONSOLE_SCREENSHOTS=<folder> saves a screenshot of each main page there (the README's
come from `QUERN_CONSOLE_SCREENSHOTS=docs/console pytest tests/system/test_console.py`)."""

import base64
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.helpers import new_username
from tests.support.live import LiveStack

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("QUERN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("QUERN_CONSOLE_SCREENSHOTS")
LLM = "quern/smollm2-135m-instruct"
IMAGES = "quern/tiny-stable-diffusion"
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def register(client: httpx.Client, admin: bool = False) -> tuple[str, str, dict[str, str]]:
    """A new account: username, password and its Authorization headers."""
    username, password = new_username(), secrets.token_urlsafe(12)
    response = client.post("/v1/auth/register", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    if admin:
        from api.admin import main

        assert main(["promote", username]) == 0
    token = client.post("/v1/auth/token", data={"username": username, "password": password})
    return username, password, {"Authorization": f"Bearer {token.json()['access_token']}"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make install` adds Debian's, or set QUERN_CHROMIUM"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def account(live: LiveStack) -> tuple[str, str, dict[str, str]]:
    """The console's user, an admin (it registers a custom model in one test)."""
    return register(live.client, admin=True)


@pytest.fixture
def page(
    browser: Browser, live: LiveStack, account: tuple[str, str, dict[str, str]]
) -> Iterator[Page]:
    """A signed-in console page; any script dialog (an injected `alert`) fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live.base_url}/console")
    page.fill("input[name=username]", account[0])
    page.fill("input[name=password]", account[1])
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    yield page
    context.close()
    assert not dialogs, f"a script ran in the console: {dialogs}"
    assert not errors, f"the console's script failed: {errors}"


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f"{SCREENSHOTS}/{name}.png", full_page=True)


def open_model(page: Page, live: LiveStack, model: str) -> None:
    page.goto(f"{live.base_url}/console#/models/{model}")
    expect(page.get_by_role("heading", name=model)).to_be_visible()


def status_of(page: Page) -> str:
    return page.locator(".prediction [data-status]").first.inner_text()


def test_the_console_is_served_with_a_strict_content_security_policy(live: LiveStack) -> None:
    response = live.client.get("/console")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    script = live.client.get("/console/console.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert live.client.get("/console/../api/main.py").status_code == 404
    assert live.client.get("/console/nothing.js").status_code == 404


def test_sign_in_lists_the_models_and_a_wrong_password_is_refused(
    browser: Browser, live: LiveStack, account: tuple[str, str, dict[str, str]]
) -> None:
    page = browser.new_page()
    page.goto(f"{live.base_url}/console")
    page.fill("input[name=username]", account[0])
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("password")
    page.fill("input[name=password]", account[1])
    page.click("button[type=submit]")
    expect(page.get_by_role("link", name=LLM)).to_be_visible()
    expect(page.get_by_role("link", name=IMAGES)).to_be_visible()
    # The token is in the page's memory only: nothing in storage, no cookie.
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.context.cookies() == []
    screenshot(page, "models")
    page.close()


def test_the_llm_streams_its_tokens_before_it_ends(page: Page, live: LiveStack) -> None:
    open_model(page, live, LLM)
    expect(page.locator("[data-field=temperature] input")).to_have_value("0.7")
    page.fill("[data-field=prompt] textarea", "Write a long story about a lighthouse keeper.")
    page.fill("[data-field=max_new_tokens] input", "120")
    page.fill("[data-field=seed] input", "3")
    page.click("button:text('Run')")
    live_text = page.locator("[data-live]")
    expect(live_text).not_to_be_empty(timeout=120_000)  # the first run loads the model
    # Tokens are on the page while the prediction still runs.
    seen_running = status_of(page) == "processing"
    expect(page.locator("[data-status=succeeded]").first).to_be_visible(timeout=120_000)
    assert seen_running, "the output appeared only when the prediction ended"
    final = page.locator(".output-text").inner_text()
    assert len(final) > 20
    expect(page.locator("dl.metrics")).to_contain_text("Output tokens")
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "run-llm")


def test_text_to_image_shows_the_image(page: Page, live: LiveStack) -> None:
    open_model(page, live, IMAGES)
    page.fill("[data-field=prompt] textarea", "a red square")
    page.fill("[data-field=num_outputs] input", "2")
    page.click("button:text('Run')")
    images = page.locator(".images img")
    expect(images).to_have_count(2, timeout=120_000)
    for index in range(2):
        image = images.nth(index)
        image.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth === 64", arg=image.element_handle()
        )
    screenshot(page, "run-image")


def test_an_uploaded_image_is_classified(page: Page, live: LiveStack) -> None:
    open_model(page, live, "quern/tiny-vit-classifier")
    page.set_input_files(
        "[data-field=image] input[type=file]",
        files=[{"name": "pixel.png", "mimeType": "image/png", "buffer": PIXEL_PNG}],
    )
    page.fill("[data-field=top_k] input", "3")
    page.click("button:text('Run')")
    expect(page.locator("table.labels tr")).to_have_count(4, timeout=120_000)  # a header + 3
    expect(page.locator("pre.input")).to_contain_text("/v1/files/")


def test_a_running_prediction_can_be_canceled(page: Page, live: LiveStack) -> None:
    open_model(page, live, LLM)
    page.fill("[data-field=prompt] textarea", "Count from one to a thousand in words.")
    page.fill("[data-field=max_new_tokens] input", "512")
    page.click("button:text('Run')")
    expect(page.locator("#cancel")).to_be_visible()
    expect(page.locator("[data-live]")).not_to_be_empty(timeout=60_000)
    page.click("#cancel")
    expect(page.locator("[data-status=canceled]").first).to_be_visible(timeout=30_000)
    expect(page.locator("#cancel")).to_be_hidden()


def test_another_users_prediction_is_not_found(page: Page, live: LiveStack) -> None:
    _, _, other = register(live.client)
    response = live.client.post(
        "/v1/predictions",
        json={"model": "quern/all-minilm-l6-v2", "input": {"text": "mine"}},
        headers=other,
    )
    assert response.status_code == 201, response.text
    theirs = response.json()["id"]
    # An admin sees everyone's: this test's user must be an ordinary one.
    username, password, _ = register(live.client)
    page.click("#signout")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    page.goto(f"{live.base_url}/console#/predictions/{theirs}")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert "mine" not in page.locator("main").inner_text()


def test_markup_in_model_output_is_shown_as_text(
    page: Page, live: LiveStack, account: tuple[str, str, dict[str, str]]
) -> None:
    name = new_username()
    admin = account[2]
    assert live.client.post("/v1/models", json={"name": name}, headers=admin).status_code == 201
    model = f"{account[0]}/{name}"
    version: dict[str, Any] = {
        "model_type": "custom",
        "predictor": "tests.support.custom_predictors:Reverse",
        "weights": "package://tests",
        "input_schema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    }
    response = live.client.post(f"/v1/models/{model}/versions", json=version, headers=admin)
    assert response.status_code == 201, response.text
    markup = "<script>alert('owned')</script><img src=x onerror=alert(2)>"
    open_model(page, live, model)
    page.fill("[data-field=text] textarea", markup[::-1])
    page.click("button:text('Run')")
    output = page.locator(".output-json")
    expect(output).to_contain_text(markup, timeout=60_000)
    assert page.locator("main script, main img[src=x]").count() == 0
    page.click("text=Open this prediction's page")
    expect(page.get_by_role("heading", name="Prediction")).to_be_visible()
    expect(page.locator(".output-json")).to_contain_text(markup)
    expect(page.locator("pre.input")).to_contain_text(markup[::-1])


def test_the_history_filters_by_status_and_a_prediction_page_shows_its_deliveries(
    page: Page, live: LiveStack, account: tuple[str, str, dict[str, str]]
) -> None:
    response = live.client.post(
        "/v1/predictions",
        json={
            "model": "quern/all-minilm-l6-v2",
            "input": {"text": "history"},
            "webhook": f"{live.base_url}/nowhere",
        },
        headers=account[2] | {"Prefer": "wait=30"},
    )
    assert response.status_code == 201, response.text
    prediction = response.json()
    page.goto(f"{live.base_url}/console#/predictions")
    expect(page.get_by_role("link", name=prediction["id"])).to_be_visible()
    page.select_option("select[name=status]", "failed")
    expect(page.locator("table.predictions [data-status=succeeded]")).to_have_count(0)
    page.select_option("select[name=status]", "succeeded")
    page.get_by_role("link", name=prediction["id"]).click()
    expect(page.locator("p.embedding")).to_contain_text("384 numbers")
    expect(page.locator("table.deliveries")).to_contain_text("completed", timeout=30_000)
    screenshot(page, "prediction")


def test_a_crafted_link_cannot_send_the_token_to_another_host(page: Page, live: LiveStack) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{live.base_url}/console#/models?page=http://127.0.0.2:9/v1/models")
    expect(page.get_by_role("link", name=LLM)).to_be_visible()
    assert requested and all(url.startswith(live.base_url) for url in requested), requested
