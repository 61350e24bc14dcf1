from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.support.helpers import register_and_login


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    from api.main import app

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def auth(client: TestClient) -> dict[str, str]:
    """Headers of a fresh user."""
    return register_and_login(client)
