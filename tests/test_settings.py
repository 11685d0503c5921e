"""Settings: environment, flags over environment, clear errors."""

import argparse
from pathlib import Path

import pytest

from smallfirst.settings import Settings, SettingsError, add_arguments, from_args


def test_environment_values_are_typed() -> None:
    s = Settings.load({"SMALLFIRST_PORT": "9001", "SMALLFIRST_DATA_DIR": "/tmp/x", "SMALLFIRST_MIN_SCORE": "0.5",
                       "SMALLFIRST_ALLOWED_ORIGINS": "https://a.example, https://b.example", "SMALLFIRST_QDRANT_URL": ""})
    assert s.port == 9001 and s.data_dir == Path("/tmp/x") and s.min_score == 0.5
    assert s.allowed_origins == ("https://a.example", "https://b.example") and s.qdrant_url is None


@pytest.mark.parametrize("env, word", [
    ({"SMALLFIRST_PORT": "many"}, "SMALLFIRST_PORT"),
    ({"SMALLFIRST_PORT": "-3"}, "port must be positive"),
    ({"SMALLFIRST_CHUNK_OVERLAP_TOKENS": "500"}, "chunk_overlap_tokens"),
    ({"SMALLFIRST_LOG_LEVEL": "loud"}, "log_level"),
    ({"SMALLFIRST_COMPLETE_CTX": "100"}, "complete_ctx"),
])
def test_bad_values_name_the_setting(env: dict[str, str], word: str) -> None:
    with pytest.raises(SettingsError, match=word):
        Settings.load(env)


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLFIRST_PORT", "9001")
    monkeypatch.setenv("SMALLFIRST_TOP_K", "7")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    s = from_args(parser.parse_args(["--port", "9002"]))
    assert s.port == 9002 and s.top_k == 7


def test_every_setting_has_a_documented_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for name in Settings.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text
        assert "SMALLFIRST_" + name.upper() in text
