"""A copy of the small model for keystrokes, whose output layer reads half the bytes.

Gemma 3 ties its output layer to its token embeddings: 262,144 × 640 weights, at Q8_0 in the
bundled GGUF (178 MB). Every decoded token reads that whole matrix, more than the rest of the
model (67 MB), and on a few cores the read is most of a keystroke's step. llama.cpp uses a
separate ``output.weight`` when a file has one, so the copy adds the same matrix at Q4_0
(94 MB); the input embeddings, read a row per token, stay as they were.

Measured on 2 cores with llama-cpp-python, a one-row step takes about a quarter less time
(``docs/autocomplete.md``). The output's log-probabilities move a little: on held-out text the
mean token log-probability fell by 0.12 nats. So only keystrokes use the copy;
answers, whose option scores decide what is picked, keep the file as it is.

The copy is made once per machine under ``$XDG_CACHE_HOME/smallfirst/keystroke-model``
(see :mod:`smallfirst.cache`), keyed by the source file; it takes about half a minute on 2 cores.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

from smallfirst.cache import built_once, cache_root, files_key

log = logging.getLogger(__name__)

RECIPE = "output.weight at Q4_0 from token_embd.weight, format 2"
MODEL_FILE = "model.gguf"
META_FILE = "model.json"
ROWS_PER_CHUNK = 16384  # embedding rows converted at a time: bounds the float copy to 40 MB
_WIDE_TYPES = ("F32", "F16", "BF16", "Q8_0")  # an output matrix stored this wide is worth narrowing


def keystroke_model(model_path: Path, cache: Path | None = None) -> Path:
    """The copy of ``model_path`` with a Q4_0 output layer, made first when missing; the file
    itself when it has a separate output layer already, or its embeddings are stored narrow already.
    Either answer is kept in the cache, so a later start reads no more than the file's ends.
    Raises OSError when the cache cannot be written or the copy is missing, ValueError when the
    file is no GGUF."""
    root = cache or cache_root("keystroke-model")
    target = root / files_key([(model_path.name, model_path)], RECIPE)

    def build(scratch: Path) -> None:
        reader = GGUFReader(str(model_path))
        names = {t.name: t for t in reader.tensors}
        embeddings = names.get("token_embd.weight")
        copy = "output.weight" not in names and embeddings is not None and embeddings.tensor_type.name in _WIDE_TYPES
        if copy:
            log.info("making the keystroke copy of %s with a Q4_0 output layer in %s (once)", model_path.name, target)
            _write(reader, scratch / MODEL_FILE)
        (scratch / META_FILE).write_text(json.dumps({"recipe": RECIPE, "source": str(model_path), "copy": copy}))

    done = built_once(target, META_FILE, build)
    if not json.loads((done / META_FILE).read_text())["copy"]:
        return model_path
    if not (done / MODEL_FILE).is_file():
        raise OSError(f"the keystroke copy {done / MODEL_FILE} is missing; remove {done} to make it again")
    return done / MODEL_FILE


def _write(reader: GGUFReader, out: Path) -> None:
    """Every key and tensor of ``reader``, plus ``output.weight``: its token embeddings at Q4_0."""
    writer = GGUFWriter(str(out), reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    writer.data_alignment = reader.alignment  # the copied general.alignment key must hold for the data
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    embeddings = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rows = embeddings.data
    output: np.ndarray | None = None
    for start in range(0, rows.shape[0], ROWS_PER_CHUNK):
        chunk = quantize(dequantize(rows[start:start + ROWS_PER_CHUNK], embeddings.tensor_type), GGMLQuantizationType.Q4_0)
        if output is None:
            output = np.empty((rows.shape[0], chunk.shape[1]), dtype=chunk.dtype)
        output[start:start + len(chunk)] = chunk
    assert output is not None  # a model has at least one token
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
    writer.add_tensor_info("output.weight", output.shape, output.dtype, output.nbytes, GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.write_tensor_data(output)
    writer.close()
