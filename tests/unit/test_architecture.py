"""The house rules that keep the HTTP layer honest, checked on the source: only dlstudy/http/
talks to libcurl, no module speaks HTTP/1.1, HTTP/2 frames or HPACK itself, and nothing touches
a private name of the HTTP libraries."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dlstudy"
HTTP_LIBRARIES = ("httpx", "httpcore", "h11", "h2", "hpack", "hyperframe", "pycurl")
# A private name reached through one of those libraries, as the pre-stop hook looks for it.
PRIVATE = re.compile(r"\b(?:h2|hpack|hyperframe|httpx|httpcore|h11|pycurl)\.[A-Za-z_.]*\b_[a-z]")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_speaks_http_itself() -> None:
    """No HTTP/1.1 parser, HTTP/2 frame or HPACK library anywhere in the package: the bytes
    are libcurl's (the embedded server's are hypercorn's)."""
    for path in modules():
        wire = imported(path) & {"h11", "h2", "hpack", "hyperframe", "httpcore"}
        assert not wire, f"{path.relative_to(PACKAGE)} imports {sorted(wire)}"


def test_only_the_http_package_drives_libcurl() -> None:
    for path in modules():
        if "pycurl" in imported(path):
            assert path.parent.name == "http", f"{path.relative_to(PACKAGE)} imports pycurl"


def test_nothing_touches_a_private_name_of_the_http_libraries() -> None:
    for path in modules():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {  # `import httpx as hx` and the like
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name.split(".")[0] in HTTP_LIBRARIES
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in HTTP_LIBRARIES:
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    assert not private, f"{path.relative_to(PACKAGE)} imports {private}"
                    assert not any(part.startswith("_") for part in node.module.split("."))
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in aliases:
                    raise AssertionError(
                        f"{path.relative_to(PACKAGE)}:{node.lineno} touches {node.attr}"
                    )
        assert not PRIVATE.search(path.read_text()), path


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import h2.connection\nimport httpx\nurl = httpx.URL._uri_reference\n")
    assert "h2" in imported(sample)
    assert PRIVATE.search(sample.read_text())


# --- the layers (docs/architecture.md) -----------------------------------------------------

# What each part of the package may import from the others, as drawn in docs/architecture.md;
# a new arrow fails here until the picture (and this table) say why it belongs.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "settings": {"errors"},  # a field of the wrong type is a UsageError
    "model": set(),
    "config": {"errors"},
    "flow": {"errors"},
    "http": {"errors", "flow", "settings"},
    "store": {"errors", "http", "model"},
    "dicomweb": {"errors", "flow", "http", "model", "settings", "store"},
    "engine": {"dicomweb", "errors", "flow", "http", "model", "settings", "store"},
    "report": {"errors", "model", "store"},  # store: the orphaned temp files of --report
    # the local catalog of an archive (DuckDB): QIDO harvesting and offline selection
    "catalog": {"dicomweb", "errors", "flow", "http", "settings", "store"},
    "jobs": {"catalog", "dicomweb", "engine", "errors", "flow", "http", "model", "report"}
    | {"settings", "store"},
    "bench": {"dicomweb", "engine", "errors", "flow", "http", "jobs", "model", "settings"}
    | {"store"},
    "server": set(),  # the embedded server shares nothing with the client
    "cli": {"bench", "catalog", "config", "dicomweb", "errors", "flow", "http", "jobs", "report"}
    | {"server", "settings"},
    "__init__": {"dicomweb", "errors", "jobs", "model", "report", "settings"},
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """`dlstudy.engine.fetch` -> engine; `dlstudy.errors` -> errors; `dlstudy` -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def dlstudy_imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The dlstudy modules (or packages) that `path` imports, relative imports resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, node.module] if node.module else base)
            if node.module:
                found.add(target)
            # `from .engine import fetch` imports a module: the circle test keeps what exists
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlstudy"):
            found.add(node.module or "")
    return found


def test_each_part_imports_only_the_parts_below_it() -> None:
    for path in modules():
        here = part_of(module_name(path))
        for target in dlstudy_imports(path):
            there = part_of(target)
            if there != here:
                assert there in ALLOWED[here], f"{module_name(path)} imports {target}"


def test_no_module_imports_itself_round_a_circle() -> None:
    """Top-level imports only: an import inside a function (to start faster, or the CLI's
    configuration reaching back to its app) runs after every module is loaded."""
    known = {module_name(path) for path in modules()}
    graph: dict[str, set[str]] = {}
    for path in modules():
        targets = set()
        for target in dlstudy_imports(path, top_level_only=True):
            while target not in known and "." in target:  # a name imported from a module
                target = target.rpartition(".")[0]
            if target in known:
                targets.add(target)
        graph[module_name(path)] = targets - {module_name(path)}

    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError(" -> ".join([*trail[trail.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
