"""The deployment files: compose.yaml validated by Debian's ``docker-compose config``, and the
structure of compose.yaml, the Dockerfile, .env.example and the Prometheus config.

No Docker engine runs here, so nothing is built or started; ``test_install.py`` installs the
package non-editable, which is what the image runs. Without ``docker-compose`` the first test
is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
ALL_PROFILES = ["--profile", "large", "--profile", "monitoring"]


def compose(*args: str, token_file: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is missing (apt-get install docker-compose); CI must run this test")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMALLFIRST_", "QDRANT_", "LARGE_", "PROMETHEUS_"))}
    env["SMALLFIRST_TOKEN_FILE"] = str(token_file)
    return subprocess.run([binary, "--project-directory", str(ROOT), "-f", str(COMPOSE), *args],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``docker-compose config`` with every profile: the file is valid and this is what it means."""
    token = tmp_path_factory.mktemp("secrets") / "api-token"
    token.write_text("test-token\n")
    result = compose(*ALL_PROFILES, "config", token_file=token)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A service's mounts by target, from the short (``src:target:mode``) or the long syntax."""
    found: dict[str, dict[str, Any]] = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target, *mode = v.split(":")
            v = {"source": source, "target": target, "read_only": mode == ["ro"],
                 "type": "bind" if source.startswith(("/", ".")) else "volume"}
        found[v["target"]] = v
    return found


@pytest.mark.slow
def test_compose_services_and_profiles(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == {"qdrant", "smallfirst", "large", "prometheus"}
    assert sorted(n for n, s in services.items() if not s.get("profiles")) == ["qdrant", "smallfirst"]
    assert services["large"]["profiles"] == ["large"] and services["prometheus"]["profiles"] == ["monitoring"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


@pytest.mark.slow
def test_images_are_pinned(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("latest", "") and re.search(r"\d", tag), f"{name}: {image}"
    qdrant = resolved["services"]["qdrant"]["image"]
    server = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)", qdrant)
    assert server, qdrant
    client_major, client_minor = _installed_version("qdrant-client")
    assert int(server[1]) == client_major and abs(int(server[2]) - client_minor) <= 1, (qdrant, client_minor)


def _installed_version(name: str) -> tuple[int, int]:
    from importlib.metadata import version

    major, minor = version(name).split(".")[:2]
    return int(major), int(minor)


@pytest.mark.slow
def test_smallfirst_uses_the_qdrant_server(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    app, qdrant = services["smallfirst"], services["qdrant"]
    assert app["build"]["dockerfile"].endswith("Dockerfile")
    assert app["environment"]["SMALLFIRST_QDRANT_URL"] == "http://qdrant:6333"
    assert app["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(app["healthcheck"]["test"])
    assert "/readyz" in " ".join(qdrant["healthcheck"]["test"])
    assert not qdrant.get("ports"), "Qdrant needs no published port"
    volumes = mounts(app)
    assert volumes["/data"]["type"] == "volume"
    assert volumes["/docs"]["read_only"] is True and app["environment"]["SMALLFIRST_WATCH_FOLDERS"] == "/docs"
    assert mounts(qdrant)["/qdrant/storage"]["type"] == "volume"
    assert {"qdrant-storage", "smallfirst-data"} <= set(resolved["volumes"])
    # The token comes from a secret, never from the compose file or the image.
    assert app["environment"]["SMALLFIRST_API_TOKEN_FILE"] == "/run/secrets/api_token"
    assert "SMALLFIRST_API_TOKEN" not in app["environment"]


@pytest.mark.slow
def test_large_and_monitoring_profiles_are_wired(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert "SMALLFIRST_LARGE_URL" in services["smallfirst"]["environment"]
    assert mounts(services["large"])["/models"]["read_only"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["smallfirst:8000"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/api_token"
    assert any(s["source"] == "api_token" for s in services["prometheus"]["secrets"])


def test_env_example_names_every_variable() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used - example == set(), "variables compose.yaml uses that .env.example does not name"


def test_dockerfile_structure() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage: build llama-cpp-python apart from the runtime image"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base[1])
    make_flags = re.search(r"^LLAMA_CMAKE_ARGS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make_flags and f'CMAKE_ARGS="{make_flags[1].strip()}"' in text, "the Makefile's CMake flags"
    assert re.search(r"pip install --no-deps /src\b", text) and " -e " not in text, "non-editable install"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*/readyz", text, re.M)
    assert "assemble()" in text and "SMALLFIRST_MODEL_PATH=" in text, "the bundled model is assembled at build time"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "secrets", ".env"} <= set(ignored)
    folders = {path.split("/")[0] for path in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()}
    copied = set(re.findall(r"^COPY (\S+) /src/\1$", text, re.M))
    assert folders <= copied, f"package folders the image never copies: {folders - copied}"
