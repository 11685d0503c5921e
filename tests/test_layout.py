"""The package's shape: every module imports, the links that let tools follow the installed
namespace are in place, and imports flow one way between the layers."""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import smallfirst

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(smallfirst.__file__).resolve().parent

# What each part may import, beside itself and the shared modules at the package's top
# (settings, errors, credentials, threads, cache). Parts inside service/ are named by their folder or
# module; an entry may also name one module of a part ("service.distill.log"). A part missing
# from here may import nothing of the package but the top.
SERVED_DISTILL = {"service.distill.log", "service.distill.adapter"}  # what the service loads of distill/
MAY_IMPORT: dict[str, set[str]] = {
    "retrieval": set(),
    "ingest": {"retrieval"},
    "service.llm": {"retrieval", "service.scheduler"},
    "service.scheduler": set(),
    "service.percentiles": set(),
    "service.protocol": {"retrieval"},
    "service.request": {"service.llm"},
    # autocomplete/request.py streams a suggestion request: the only module of it that speaks the protocol
    "service.autocomplete": {"retrieval", "service.llm", "service.scheduler", "service.protocol", "service.request"},
    "service.distill": {"retrieval", "service.llm", "service.tools"},
    "service.core": {"retrieval", "ingest", "service.llm", "service.scheduler", "service.autocomplete",
                     "service.percentiles", *SERVED_DISTILL},
    "service.answer": {"retrieval", "service.llm", "service.protocol", "service.request", "service.core",
                       *SERVED_DISTILL},
    "service.server": {"retrieval", "service.llm", "service.scheduler", "service.protocol", "service.request",
                       "service.core", "service.answer", "service.autocomplete"},
    "service.tools": {"retrieval", "ingest", "service.percentiles"},
    "service.cli": {"retrieval", "ingest", "service.llm", "service.server", "service.tools", "service.distill"},
    "service.__main__": {"service.cli"},
}
TOP = {"settings", "errors", "credentials", "threads", "cache"}


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name, found through the links in smallfirst/."""
    found = {}
    paths = [Path(folder) / name for folder, _, names in os.walk(PACKAGE, followlinks=True)
             for name in names if name.endswith(".py")]
    for path in sorted(paths):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("smallfirst", *parts))] = path
    return found


def part_of(module: str) -> str:
    """The layer a module belongs to: ``retrieval``, ``ingest``, ``service.<folder or module>``, or a top module."""
    parts = module.split(".")[1:]
    if not parts:
        return ""
    if parts[0] == "service" and len(parts) > 1:
        return f"service.{parts[1]}"
    return parts[0]


def imported(path: Path) -> set[str]:
    """The package modules ``path`` imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("smallfirst.")}


def test_the_links_put_every_folder_under_the_installed_name() -> None:
    for name in ("service", "retrieval", "ingest"):
        link = PACKAGE / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), f"smallfirst/{name} must link to {name}/"


def test_every_module_imports() -> None:
    modules = module_files()
    assert len(modules) > 90, sorted(modules)
    failed = {}
    for name in modules:
        if name.endswith(".__main__"):  # runs the command line when imported
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:  # a moved module left behind, or a dependency the install lacks
            failed[name] = repr(exc)
    assert not failed, failed


def test_imports_flow_one_way_between_the_layers() -> None:
    modules = module_files()
    assert len(modules) > 90, sorted(modules)
    wrong = []
    for name, path in modules.items():
        part = part_of(name)
        allowed = TOP if part in TOP or part == "" else MAY_IMPORT.get(part, set()) | TOP | {part}
        for target in imported(path):
            other = part_of(target)
            if target in modules and other not in allowed and target.removeprefix("smallfirst.") not in allowed:
                wrong.append(f"{name} imports {target} ({part} -> {other})")
    assert not wrong, "\n".join(wrong)


def test_the_layers_form_no_cycle() -> None:
    """The table above orders the layers: no layer may reach back to one that imports it."""
    done: set[str] = set()

    def visit(part: str, path: tuple[str, ...]) -> None:
        assert part not in path, " -> ".join((*path, part))
        if part in done:
            return
        for other in MAY_IMPORT.get(part, set()) - SERVED_DISTILL:
            visit(other, (*path, part))
        done.add(part)

    for part in MAY_IMPORT:
        visit(part, ())
