"""The shipped question-shape and pick models: they load, they are the ones the dev data fits, and
retraining them reproduces the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smallfirst.retrieval.answer_check import PICK_MODEL_FILE, PickModel
from smallfirst.retrieval.picking import CANDIDATE_FEATURES
from smallfirst.retrieval.shapes import SHAPE_MODEL_FILE, SHAPES, ShapeModel, word_features

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_models_load_with_the_features_the_code_computes() -> None:
    shapes = ShapeModel.load()
    assert shapes.classes == SHAPES and shapes.weights.shape[0] == len(SHAPES)
    pick = PickModel.load()
    assert len(pick.weights) == len(CANDIDATE_FEATURES) and 0.0 < pick.threshold <= 1.0


def test_a_pick_model_fitted_on_other_features_is_refused(tmp_path: Path) -> None:
    data = json.loads(PICK_MODEL_FILE.read_text())
    data["features"] = data["features"][:-1]
    stale = tmp_path / "pick_model.json"
    stale.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="other features"):
        PickModel.load(stale)


def test_the_shape_model_reads_a_questions_opening_words_and_pairs_and_refuses_other_features(tmp_path: Path) -> None:
    groups = word_features("How many lamps stay dark at night?")
    assert groups[:3] == [["how"], ["many"], ["lamps"]]
    assert "night" in groups[3] and "how many" in groups[4] and "stay dark" in groups[4]
    data = json.loads(SHAPE_MODEL_FILE.read_text())
    data["vocabularies"] = data["vocabularies"][:2]
    stale = tmp_path / "question_shape_model.json"
    stale.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="other features"):
        ShapeModel.load(stale)


def test_a_shape_picked_no_better_than_chance_is_one_the_check_never_vouches_for() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from train_answer_models import _unsupported_shapes
    finally:
        sys.path.remove(str(ROOT / "bench"))
    # Per shape, 20 questions with one right candidate each, the pick right for 11: with two
    # candidates a coin does as well; with four, a blind pick is right about 5 times. Questions
    # with one candidate are no choice, whatever their answers.
    probabilities: list[float] = []
    questions: list[str] = []
    shapes: list[str] = []
    right: list[bool] = []
    for shape, options in (("yesno", 2), ("name", 4), ("count", 1)):
        for n in range(20):
            picked_right = n < 11
            for k in range(options):
                questions.append(f"{shape}{n:02d}")
                shapes.append(shape)
                right.append(k == 0 if options > 1 else n < 3)
                probabilities.append(0.9 if (k == 0) == picked_right else 0.1)
    unsupported, figures = _unsupported_shapes(np.array(probabilities), np.array(questions), np.array(shapes),
                                               np.array(right))
    assert unsupported == {"yesno"} and "count" not in figures
    assert figures["yesno"]["right"] == figures["name"]["right"] == 0.55
    assert figures["yesno"]["blind_pick_right"] == 0.5 and figures["name"]["blind_pick_right"] == 0.25


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_models(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / "train_answer_models.py"), "--out-dir", str(tmp_path)],
                   check=True, capture_output=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert (tmp_path / PICK_MODEL_FILE.name).read_bytes() == PICK_MODEL_FILE.read_bytes()
    fitted, shipped = (json.loads(p.read_text()) for p in (tmp_path / SHAPE_MODEL_FILE.name, SHAPE_MODEL_FILE))
    assert fitted["classes"] == shipped["classes"] and fitted["vocabularies"] == shipped["vocabularies"]
    # The shape model is fitted on the embedder's vectors, which may differ in their last bits across CPUs.
    assert np.allclose(fitted["weights"], shipped["weights"], atol=1e-3)
    assert np.allclose(fitted["bias"], shipped["bias"], atol=1e-3)
