"""The hook that hands freed memory back to the OS (api/memory.py). What it gives back after a
real burst is measured by hand (README, "Memory"), not here: no timed tests."""

import asyncio

import pytest

from api import memory


def test_trim_calls_glibc_or_reports_nothing_released(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake(pad: int) -> int:
        calls.append(pad)
        return 1

    monkeypatch.setattr(memory, "_malloc_trim", fake)
    assert memory.trim() is True and calls == [0]
    monkeypatch.setattr(memory, "_malloc_trim", None)
    assert memory.trim() is False


def test_the_real_malloc_trim_is_found_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert memory._malloc_trim is not None
    assert memory.trim() in (True, False)


def test_trimming_runs_in_the_background_until_the_block_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> int:
        trimmed = asyncio.Event()
        calls = 0

        def fake(pad: int) -> int:
            nonlocal calls
            calls += 1
            loop.call_soon_threadsafe(trimmed.set)
            return 0

        loop = asyncio.get_running_loop()
        monkeypatch.setattr(memory, "_malloc_trim", fake)
        async with memory.trimming(0.01):
            await asyncio.wait_for(trimmed.wait(), 10)
        after = calls
        await asyncio.sleep(0.05)
        assert calls == after, "still trimming after the block"
        return calls

    assert asyncio.run(scenario()) >= 1


def test_no_trimming_with_an_interval_of_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", lambda pad: pytest.fail("trimmed"))

    async def scenario() -> None:
        before = len(asyncio.all_tasks())
        async with memory.trimming(0):
            assert len(asyncio.all_tasks()) == before
            await asyncio.sleep(0.02)

    asyncio.run(scenario())
