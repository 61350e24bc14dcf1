"""jsonb comes back as it went in, whichever decoder reads it (db/json_codec.py)."""

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import text

from api.database import connection, open_pool
from db.engine import get_engine
from db.json_codec import loads

SAMPLES = [
    b"[0.015612766, -0.021163514, 1.5e-07, 0]",
    b'{"seed": 123456789012345678901234567890, "n": -98765432109876543210}',
    b'{"max": 9223372036854775807, "text": "12345678901234567890123", "e": "\\u00e9"}',
    b"[0.000123456789012345678901]",
    b"1e400",
    b'{"nested": [true, null, {"z": -1.5e-7}]}',
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_decoding_agrees_with_the_standard_library_to_the_type(raw: bytes) -> None:
    ours, standard = loads(raw), json.loads(raw)
    assert ours == standard
    assert json.dumps(ours) == json.dumps(standard)  # same types: 10**29 stays an int


BIG = {"seed": 123456789012345678901234567890, "embedding": [0.5, -1.25]}


def test_large_integers_survive_a_round_trip_through_postgresql() -> None:
    with get_engine().connect() as conn:
        value = conn.execute(text("SELECT CAST(:v AS jsonb)"), {"v": json.dumps(BIG)}).scalar()
    assert value == BIG and isinstance(value["seed"], int)

    async def through_the_api_pool() -> Any:
        pool = await open_pool()
        try:
            async with connection(pool) as conn:
                cursor = await conn.execute("SELECT %s::jsonb", (json.dumps(BIG),))
                row = await cursor.fetchone()
                assert row is not None
                return row[0]
        finally:
            await pool.close()

    assert asyncio.run(through_the_api_pool()) == BIG
