"""The text-to-image type on the tiny pipeline, in process: real diffusers code, random weights.

Building, loading and drawing 64x64 images take well under a second each on 2 cores.
"""

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models import tiny_diffusion, weights
from models.base import FileOutput, PredictionError, stop_check
from models.text_to_image import TextToImagePredictor

CAT = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 4, "seed": 7}


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> TextToImagePredictor:
    folder = tiny_diffusion.build(tmp_path_factory.mktemp("tiny") / "sd")
    loaded = TextToImagePredictor(folder, "cpu")
    loaded.setup()
    return loaded


def decoded(output: Any) -> list[Image.Image]:
    assert isinstance(output, list) and output
    assert all(isinstance(f, FileOutput) and f.content_type == "image/png" for f in output)
    return [Image.open(io.BytesIO(f.data), formats=["PNG"]) for f in output]


def test_each_input_of_a_batch_gets_its_own_pngs_of_the_requested_size(
    predictor: TextToImagePredictor,
) -> None:
    wide = {"prompt": "a dog on a hill", "negative_prompt": "blurry", "width": 128,
            "height": 64, "num_inference_steps": 3, "num_outputs": 3}  # fmt: skip
    cats, dogs = predictor.predict_batch([CAT | {"num_outputs": 2}, wide])
    assert [image.size for image in decoded(cats)] == [(64, 64)] * 2
    assert [image.size for image in decoded(dogs)] == [(128, 64)] * 3
    assert all(image.mode == "RGB" for image in decoded(cats) + decoded(dogs))
    assert len({f.data for f in cats + dogs}) == 5  # noise, but each image its own


def pixels(file: FileOutput) -> Any:
    return np.asarray(Image.open(io.BytesIO(file.data)), dtype=np.int16)


def test_a_seed_gives_the_same_image_again_and_in_any_batch(
    predictor: TextToImagePredictor,
) -> None:
    (alone,) = predictor.predict_batch([CAT])
    assert predictor.predict_batch([CAT])[0][0].data == alone[0].data
    other = {"prompt": "zzz", "width": 64, "height": 64, "num_inference_steps": 4, "seed": 1}
    _, batched, reseeded = predictor.predict_batch([other, CAT, CAT | {"seed": 8}])
    # CPU kernels round differently at another batch size (oneDNN convolutions, MKL's path
    # for one row): a channel value may move by one, and nothing more.
    difference = np.abs(pixels(batched[0]) - pixels(alone[0]))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    assert np.abs(pixels(reseeded[0]) - pixels(alone[0])).mean() > 10


def test_the_stop_hook_interrupts_a_run_at_the_next_step(predictor: TextToImagePredictor) -> None:
    checks = 0

    def stop_all() -> list[bool]:
        nonlocal checks
        checks += 1
        return [True]

    with stop_check(stop_all):
        (stopped,) = predictor.predict_batch([CAT | {"num_inference_steps": 20}])
    assert isinstance(stopped, PredictionError) and checks == 1


def test_a_stopped_input_fails_while_the_rest_of_its_batch_finishes(
    predictor: TextToImagePredictor,
) -> None:
    with stop_check(lambda: [True, False]):
        stopped, finished = predictor.predict_batch([CAT, CAT | {"seed": 9}])
    assert isinstance(stopped, PredictionError)
    assert [image.size for image in decoded(finished)] == [(64, 64)]


def test_a_size_the_pipeline_cannot_draw_is_refused_alone(predictor: TextToImagePredictor) -> None:
    refused, drawn = predictor.predict_batch([CAT | {"width": 60}, CAT])
    assert isinstance(refused, PredictionError) and "multiple of 8" in str(refused)
    assert len(decoded(drawn)) == 1


def test_builds_are_identical_and_a_second_build_is_a_no_op(tmp_path: Path) -> None:
    first, second = tiny_diffusion.build(tmp_path / "a"), tiny_diffusion.build(tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert any(p.suffix == ".safetensors" for p in files)
    assert all((first / p).read_bytes() == (second / p).read_bytes() for p in files)
    stamp = (first / "model_index.json").stat().st_mtime_ns
    assert tiny_diffusion.build(first) == first
    assert (first / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []


def test_the_generated_weights_reference_builds_into_the_model_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUERN_MODEL_CACHE_DIR", str(tmp_path))
    folder = weights.resolve("generated://tiny-stable-diffusion")
    assert folder == tmp_path / f"tiny-stable-diffusion-{tiny_diffusion.VERSION}"
    assert (folder / "model_index.json").exists()
    with pytest.raises(weights.WeightsNotFound):
        weights.resolve("generated://something-else")
