"""Fit the question-shape model and the pick model on the ``dev`` QA sets; the ``test`` sets are never read.

    python bench/pick_data.py --store-cache DIR     # first, when the candidates or their features change
    python bench/train_answer_models.py             # refit both from what ships
    python bench/train_answer_models.py --out-dir DIR   # write elsewhere (the test compares)

- **Question shapes** (``retrieval/data/question_shape_model.json``): multinomial logistic
  regression over each dev question's embedding and its words (see ``retrieval/shapes.py``),
  labelled with the shape its QA line gives, classes weighted to balance.
- **The pick model** (``retrieval/data/pick_model.json``): logistic regression over the features
  of every candidate span of every dev question (``retrieval/data/pick_examples.jsonl``, written
  by ``bench/pick_data.py``: features, label, set name and a question number, no question text),
  labelled right or wrong by the QA set's accepted answers. The answer is the candidate it finds
  likeliest. Each answer is scored by a model fitted without its own corpus. A question shape
  whose answers among two or more candidates are then not shown to beat blind picks
  among the same candidates (one-sided test at ``CHANCE_LEVEL``) is one whose choices the check
  never vouches for; the threshold is the lowest confidence at which the other answers are right
  at ``PRECISION`` or better.

Regularisation is chosen by leave-one-corpus-out over the dev sets, so that what is chosen
carries to a corpus the fit has not seen. Deterministic: the same data gives the same files.
Prints the figures last, in one plain line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from harness import ROOT
from qa_sets import SETS, load

sys.path.insert(0, str(ROOT))

from smallfirst.retrieval.answer_check import PICK_MODEL_FILE, PickModel  # noqa: E402
from smallfirst.retrieval.picking import CANDIDATE_FEATURES  # noqa: E402
from smallfirst.retrieval.shapes import SHAPE_MODEL_FILE, SHAPES, ShapeModel, features, word_features  # noqa: E402

PICK_EXAMPLES_FILE = ROOT / "retrieval" / "data" / "pick_examples.jsonl"
PRECISION = 0.8  # on answers scored by a model fitted without their corpus (0.9 there covers under 1% of them)
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
CHANCE_LEVEL = 0.05  # a shape's held-out picks must beat chance at this significance for the check to vouch for it
MIN_WORD_COUNT = 3  # a word feature needs this many dev questions to become one
DEV = tuple(name for name, s in SETS.items() if s.split == "dev")


def _logistic(c: float, balanced: bool = False):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, tol=1e-8, solver="lbfgs", class_weight="balanced" if balanced else None)


def _shape_vocabularies(questions: list[str]) -> list[list[str]]:
    """Per group of word features, those that at least MIN_WORD_COUNT of these questions have."""
    counts: list[dict[str, int]] = []
    for q in questions:
        for group, present in enumerate(word_features(q)):
            if group == len(counts):
                counts.append({})
            for word in set(present):
                counts[group][word] = counts[group].get(word, 0) + 1
    return [sorted(w for w, n in group.items() if n >= MIN_WORD_COUNT) for group in counts]


def fit_shapes() -> tuple[ShapeModel, dict]:
    from smallfirst.retrieval.embedder import Embedder

    rows = [(name, row) for name in DEV for row in load(SETS[name]) if row["kind"] == "grounded"]
    questions = [row["question"] for _, row in rows]
    embedder = Embedder(cache_size=1)
    vectors = np.stack([embedder.embed_query(q) for q in questions])
    y = np.array([SHAPES.index(row["shape"]) for _, row in rows])
    groups = np.array([name for name, _ in rows])

    def matrix(vocabularies: list[list[str]]) -> np.ndarray:
        return np.stack([features(v, q, vocabularies) for v, q in zip(vectors, questions)])

    # Leave one corpus out, with the word features chosen from the other corpora only; C by the
    # share of all held-out questions whose shape is right.
    by_c = {}
    for c in C_GRID:
        right = 0
        for group in np.unique(groups):
            train = groups != group
            x = matrix(_shape_vocabularies([q for q, t in zip(questions, train) if t]))
            right += int((_logistic(c, balanced=True).fit(x[train], y[train]).predict(x[~train]) == y[~train]).sum())
        by_c[c] = right / len(y)
    best = max(by_c.values())
    c = min(k for k, v in by_c.items() if v >= best - 1e-9)
    vocabularies = _shape_vocabularies(questions)
    x = matrix(vocabularies)
    model = _logistic(c, balanced=True).fit(x, y)
    weights = np.zeros((len(SHAPES), x.shape[1]))
    bias = np.zeros(len(SHAPES))
    for row, label in enumerate(model.classes_):
        weights[label] = model.coef_[row]
        bias[label] = model.intercept_[row]
    absent = [i for i in range(len(SHAPES)) if i not in model.classes_]
    bias[absent] = -1e3  # a shape no dev question has is never predicted
    shape_model = ShapeModel(SHAPES, tuple(tuple(v) for v in vocabularies), weights, bias)
    return shape_model, {"questions": len(rows), "C": c, "held_out_corpus_accuracy": {str(k): round(v, 4) for k, v in by_c.items()}}


def _threshold(confidences: np.ndarray, right: np.ndarray) -> float:
    """The lowest confidence at which the answers at or above it are right at PRECISION or better."""
    order = np.argsort(-confidences, kind="stable")
    hits = np.cumsum(right[order])
    best = None
    for i in range(len(order)):
        if i + 1 < len(order) and confidences[order[i + 1]] == confidences[order[i]]:
            continue
        if hits[i] / (i + 1) >= PRECISION:
            best = float(confidences[order[i]])
    return best if best is not None else 1.0


def _picks(probabilities: np.ndarray, questions: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per question: the confidence of its likeliest candidate, and whether that one is right."""
    confidence, chosen_right = [], []
    for q in np.unique(questions):
        members = np.flatnonzero(questions == q)
        best = members[np.argmax(probabilities[members])]
        confidence.append(probabilities[best])
        chosen_right.append(right[best])
    return np.array(confidence), np.array(chosen_right, dtype=bool)


def _beats_chance(right: int, chances: list[float]) -> bool:
    """Whether ``right`` answers are more than blind picks explain, where each question's blind
    pick is right with its chance: one-sided test on the exact (Poisson binomial) distribution."""
    distribution = np.array([1.0])
    for p in chances:
        distribution = np.convolve(distribution, [1.0 - p, p])
    return float(distribution[right:].sum()) < CHANCE_LEVEL


def _unsupported_shapes(probabilities: np.ndarray, questions: np.ndarray, shapes: np.ndarray,
                        right: np.ndarray) -> tuple[frozenset[str], dict[str, dict[str, object]]]:
    """The shapes whose held-out picks among two or more candidates (``probabilities`` and
    ``right`` per candidate) are not shown to beat blind picks among the same candidates, and
    each shape's figures. A question with one candidate is no choice, so it is not counted."""
    unique = np.unique(questions)
    _, chosen_right = _picks(probabilities, questions, right)
    choices = [i for i, q in enumerate(unique) if (questions == q).sum() > 1]
    figures: dict[str, dict[str, object]] = {}
    unsupported: set[str] = set()
    for shape in sorted({str(s) for s in shapes}):
        mine = [i for i in choices if str(shapes[np.flatnonzero(questions == unique[i])[0]]) == shape]
        if not mine:
            continue
        hits = int(chosen_right[mine].sum())
        chances = [float(right[questions == unique[i]].mean()) for i in mine]
        vouched = _beats_chance(hits, chances)
        figures[shape] = {"questions": len(mine), "right": round(hits / len(mine), 4),
                          "blind_pick_right": round(float(np.mean(chances)), 4), "vouched": vouched}
        if not vouched:
            unsupported.add(shape)
    return frozenset(unsupported), figures


def fit_pick(examples: list[dict]) -> tuple[PickModel, dict]:
    x = np.array([[e["features"][k] for k in CANDIDATE_FEATURES] for e in examples], dtype=np.float64)
    y = np.array([int(e["right"]) for e in examples])
    groups = np.array([e["set"] for e in examples])
    questions = np.array([f"{e['set']}:{e['question']}" for e in examples])
    shapes = np.array([e["shape"] for e in examples])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale

    def pick_accuracy(model, xs, ys, qs):
        return float(_picks(model.predict_proba(xs)[:, 1], qs, ys)[1].mean())

    results = {}
    for c in C_GRID:
        held = []
        for group in np.unique(groups):
            train = groups != group
            model = _logistic(c).fit(z[train], y[train])
            held.append(pick_accuracy(model, z[~train], y[~train], questions[~train]))
        results[c] = float(np.mean(held))
    best_score = max(results.values())
    c = min(k for k, v in results.items() if v >= best_score - 1e-9)
    held_out = np.zeros(len(y))
    for group in np.unique(groups):
        train = groups != group
        held_out[~train] = _logistic(c).fit(z[train], y[train]).predict_proba(z[~train])[:, 1]
    confidence, right = _picks(held_out, questions, y)
    unsupported, by_shape = _unsupported_shapes(held_out, questions, shapes, y)
    first = [np.flatnonzero(questions == q) for q in np.unique(questions)]
    vouched = np.array([len(m) == 1 or str(shapes[m[0]]) not in unsupported for m in first])
    threshold = _threshold(confidence[vouched], right[vouched])
    lm = x[:, CANDIDATE_FEATURES.index("lm_score")]
    _, lm_right = _picks(lm, questions, y)
    model = _logistic(c).fit(z, y)
    pick = PickModel(model.coef_[0].astype(np.float64), float(model.intercept_[0]), mean, scale, threshold,
                     unsupported)
    covered = vouched & (confidence >= threshold)
    meta = {"candidates": len(y), "questions": int(len(confidence)), "C": c,
            "held_out_corpus_pick_accuracy": {str(k): round(v, 4) for k, v in results.items()},
            "held_out_pick_right": round(float(right.mean()), 4),
            "held_out_by_shape": by_shape,
            "small_model_alone_pick_right": round(float(lm_right.mean()), 4),
            "held_out_precision": round(float(right[covered].mean()), 4) if covered.any() else None,
            "held_out_coverage_of_picked": round(float(covered.mean()), 4)}
    return pick, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=None, help="Write the models here instead of retrieval/data.")
    parser.add_argument("--skip-shapes", action="store_true", help="Refit the pick model only.")
    args = parser.parse_args()
    out_dir = args.out_dir or SHAPE_MODEL_FILE.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    line = []
    if not args.skip_shapes:
        shape_model, shape_meta = fit_shapes()
        (out_dir / SHAPE_MODEL_FILE.name).write_bytes(shape_model.to_json(**shape_meta))
        line.append(f"shapes: questions={shape_meta['questions']} C={shape_meta['C']} "
                    f"held_out_corpus_accuracy={shape_meta['held_out_corpus_accuracy'][str(shape_meta['C'])]}")
    if PICK_EXAMPLES_FILE.exists():
        examples = [json.loads(line_) for line_ in PICK_EXAMPLES_FILE.read_text().splitlines() if line_.strip()]
        pick, meta = fit_pick(examples)
        (out_dir / PICK_MODEL_FILE.name).write_bytes(pick.to_json(**meta))
        line.append(f"pick: candidates={meta['candidates']} questions={meta['questions']} C={meta['C']} "
                    f"threshold={pick.threshold:.3f} held_out_pick_right={meta['held_out_pick_right']} "
                    f"small_model_alone={meta['small_model_alone_pick_right']} "
                    f"held_out_precision={meta['held_out_precision']} held_out_coverage={meta['held_out_coverage_of_picked']} "
                    f"unsupported_shapes={','.join(sorted(pick.unsupported_shapes)) or 'none'}")
    print(" | ".join(line) or "nothing to fit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
