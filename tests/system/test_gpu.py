"""Every model type on the GPU, through the worker's own loading path (skipped without CUDA).

Run on a machine with an NVIDIA GPU: `make test` runs it there; elsewhere it is skipped."""

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from db.repositories import models
from db.seed import SYSTEM_USER
from db.session import session_scope
from db.tables import ModelVersion
from models.base import FileOutput
from tests.support.helpers import new_username
from workers.runtime import WorkerRuntime
from workers.settings import get_worker_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def runtime() -> Iterator[WorkerRuntime]:
    """One worker runtime for every test here, as in a worker process."""
    built = WorkerRuntime(get_worker_settings())
    yield built
    built.stop()


def gpu_version(builtin: str | None, **fields: Any) -> ModelVersion:
    """A `gpu` copy of a built-in model's latest version, or a new custom one."""
    with session_scope() as session:
        original = models.get(session, owner=SYSTEM_USER, name=builtin or "all-minilm-l6-v2")
        assert original is not None and original.latest_version is not None
        model = models.create(session, owner_id=original.model.owner_id, name=new_username())
        base = original.latest_version
        version = models.create_version(
            session,
            model_id=model.id,
            model_type=fields.get("model_type", base.model_type),
            predictor=fields.get("predictor"),
            weights=fields.get("weights", base.weights),
            input_schema=base.input_schema,
            hardware="gpu",
            max_batch_size=4,
            max_batch_wait_ms=0,
            run_timeout_s=60,
        )
        session.expunge(version)
    return version


def run(
    runtime: WorkerRuntime, version: ModelVersion, inputs: list[dict[str, Any]]
) -> tuple[Any, list[Any]]:
    loaded, _ = runtime.get_predictor(version)
    assert loaded.device == "cuda"
    assert loaded.size_bytes > 0 or version.model_type == "custom"
    return loaded.predictor, loaded.predictor.predict_batch(inputs)


def test_embeddings_run_in_fp16_on_the_gpu(runtime: WorkerRuntime) -> None:
    predictor, outputs = run(
        runtime, gpu_version("all-minilm-l6-v2"), [{"text": "a"}, {"text": "b"}]
    )
    assert next(predictor.model.parameters()).dtype == torch.float16
    assert next(predictor.model.parameters()).is_cuda
    assert [len(output.output) for output in outputs] == [384, 384]
    assert all(output.metrics["input_token_count"] == 3 for output in outputs)  # [CLS] a [SEP]


def test_text_generation_runs_in_bf16_on_the_gpu(runtime: WorkerRuntime) -> None:
    item = {"prompt": "Say hi", "max_new_tokens": 8, "temperature": 0, "top_p": 1.0}
    predictor, outputs = run(runtime, gpu_version("smollm2-135m-instruct"), [item, item])
    assert next(predictor.model.parameters()).dtype == torch.bfloat16
    assert outputs[0] == outputs[1] and isinstance(outputs[0].output, str) and outputs[0].output
    assert 0 < outputs[0].metrics["output_token_count"] <= 8


def test_text_to_image_runs_in_fp16_on_the_gpu(runtime: WorkerRuntime) -> None:
    item = {"prompt": "a red square", "width": 64, "height": 64, "num_inference_steps": 2,
            "guidance_scale": 5.0, "num_outputs": 1, "seed": 1}  # fmt: skip
    _, outputs = run(runtime, gpu_version("tiny-stable-diffusion"), [item])
    (image,) = outputs[0]
    assert isinstance(image, FileOutput) and image.data.startswith(b"\x89PNG")


def test_a_custom_predictor_is_given_the_gpu(runtime: WorkerRuntime) -> None:
    version = gpu_version(
        None, model_type="custom", predictor="tests.support.custom_predictors:Reverse",
        weights="package://tests",
    )  # fmt: skip
    _, outputs = run(runtime, version, [{"text": "ab"}])
    assert outputs == [{"text": "ba", "device": "cuda", "batch": 1}]
