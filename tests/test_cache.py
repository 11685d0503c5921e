"""Folders built once per machine (smallfirst.cache): built once, never seen half made."""

from __future__ import annotations

from pathlib import Path

import pytest

from smallfirst.cache import built_once, cache_root, files_key


def _writer(calls: list[Path]):
    def build(scratch: Path) -> None:
        calls.append(scratch)
        (scratch / "weights").write_text("w")
        (scratch / "done").write_text("")
    return build


def test_a_folder_is_built_once_then_reused(tmp_path: Path) -> None:
    calls: list[Path] = []
    target = tmp_path / "key"
    assert built_once(target, "done", _writer(calls)) == target
    assert built_once(target, "done", _writer(calls)) == target
    assert len(calls) == 1 and (target / "weights").read_text() == "w"
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["key"]  # no scratch folder left


def test_a_failed_build_leaves_nothing_and_the_next_call_builds(tmp_path: Path) -> None:
    target = tmp_path / "key"

    def broken(scratch: Path) -> None:
        (scratch / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        built_once(target, "done", broken)
    assert not target.exists() and not [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    calls: list[Path] = []
    built_once(target, "done", _writer(calls))
    assert len(calls) == 1 and (target / "weights").read_text() == "w"


def test_a_folder_without_its_marker_is_built_anew(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.mkdir()
    (target / "weights").write_text("left by a crash")
    calls: list[Path] = []
    built_once(target, "done", _writer(calls))
    assert len(calls) == 1 and (target / "weights").read_text() == "w"


def test_the_key_follows_the_files_and_the_recipe(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"a" * 3_000_000)
    key = files_key([("model.gguf", model)], "format 1")
    assert files_key([("model.gguf", model)], "format 1") == key
    assert files_key([("model.gguf", model)], "format 2") != key
    model.write_bytes(b"a" * 2_999_999 + b"b")  # same size, last MiB changed
    assert files_key([("model.gguf", model)], "format 1") != key


def test_the_root_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root("distill") == tmp_path / "smallfirst" / "distill"
