"""The keystroke copy of the small model: a Q4_0 output layer beside everything the file held,
made once, and a model that predicts the same tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

from smallfirst.service.core.components import _keystroke_model
from smallfirst.service.llm.keystroke_model import keystroke_model
from smallfirst.service.llm.loading import bundled_model_path, load_llama
from smallfirst.service.llm.option_scoring import next_logprobs

TEXT = (
    "The museum keeps its collection of ship models in the east wing. Visitors who arrive before noon "
    "can join a guided tour, which starts at the ticket desk and ends in the workshop where the models "
    "are repaired. Photography is allowed everywhere except in the archive."
)


def _tiny_model(path: Path, output: bool) -> Path:
    """A GGUF shaped like the bundled one, small: Q8_0 token embeddings, a norm, a few keys."""
    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_token_list(["<pad>", "a", "b", "c"])
    tensors = {
        "token_embd.weight": (quantize(rng.normal(size=(256, 64)).astype(np.float32), GGMLQuantizationType.Q8_0),
                              GGMLQuantizationType.Q8_0),
        "output_norm.weight": (np.ones(64, dtype=np.float32), GGMLQuantizationType.F32),
    }
    if output:
        tensors["output.weight"] = (np.zeros((256, 64), dtype=np.float32), GGMLQuantizationType.F32)
    for name, (data, kind) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _keys(reader: GGUFReader) -> dict[str, object]:
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


def test_the_copy_adds_a_q4_0_output_layer_and_keeps_every_key_and_tensor(tmp_path: Path) -> None:
    source = _tiny_model(tmp_path / "tiny.gguf", output=False)
    copy = keystroke_model(source, tmp_path / "cache")
    assert copy != source and copy.is_relative_to(tmp_path / "cache")
    held, made = GGUFReader(str(source)), GGUFReader(str(copy))
    assert _keys(made) == _keys(held)
    kept = {t.name: t for t in made.tensors}
    for tensor in held.tensors:
        assert kept[tensor.name].tensor_type == tensor.tensor_type
        assert np.array_equal(kept[tensor.name].data, tensor.data), tensor.name
    output, embeddings = kept["output.weight"], kept["token_embd.weight"]
    assert output.tensor_type == GGMLQuantizationType.Q4_0 and len(made.tensors) == len(held.tensors) + 1
    wide = dequantize(embeddings.data, embeddings.tensor_type)
    narrow = dequantize(output.data, output.tensor_type)  # the embedding matrix, narrowed
    assert narrow.shape == wide.shape and np.abs(narrow - wide).max() < 0.2 * np.abs(wide).max()


def test_the_copy_is_made_once_and_a_file_with_its_own_output_layer_is_used_as_it_is(tmp_path: Path) -> None:
    source = _tiny_model(tmp_path / "tiny.gguf", output=False)
    copy = keystroke_model(source, tmp_path / "cache")
    made = copy.stat().st_mtime_ns
    assert keystroke_model(source, tmp_path / "cache") == copy and copy.stat().st_mtime_ns == made
    separate = _tiny_model(tmp_path / "separate.gguf", output=True)
    assert keystroke_model(separate, tmp_path / "cache") == separate
    assert keystroke_model(copy, tmp_path / "cache") == copy


def test_keystrokes_run_on_the_file_itself_when_no_copy_can_be_made(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))  # a header and nothing after it
    assert _keystroke_model(broken) == broken


@pytest.mark.slow
def test_the_bundled_models_copy_predicts_the_tokens_the_model_predicts() -> None:
    copy = keystroke_model(bundled_model_path())  # the machine's copy, which the suite's services use too
    assert copy != bundled_model_path()

    def predictions(path: Path) -> list[int]:
        llama = load_llama(path, 512, 0)
        tokens = llama.tokenize(TEXT.encode(), add_bos=True)
        out = []
        for i in range(1, len(tokens)):
            llama.eval(tokens[i - 1:i])
            out.append(int(np.argmax(next_logprobs(llama))))
        return out

    # The narrower output moves some close calls (43 of these 50 tokens agree); a copy whose rows
    # were mixed up or mangled would agree on almost none.
    wide, narrow = predictions(bundled_model_path()), predictions(copy)
    assert sum(a == b for a, b in zip(wide, narrow)) >= 0.75 * len(wide)
