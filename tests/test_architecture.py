"""The house rules that keep the HTTP layer honest, checked on the source: only dlstudy/http/
talks to libcurl, no module speaks HTTP/1.1, HTTP/2 frames or HPACK itself, and nothing touches
a private name of the HTTP libraries."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dlstudy"
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


def dlstudy_imports(path: Path) -> set[str]:
    """The dlstudy modules a module imports, as dotted names under the package."""
    package = ["dlstudy", *path.relative_to(PACKAGE).parent.parts]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "dlstudy")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.split(".")[0] == "dlstudy":
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_server_and_the_client_never_import_each_other() -> None:
    """The embedded server (and its virtual archive) shares no code with the download client,
    so it cannot hide a client bug; only the CLI composes the two."""
    for path in modules():
        layer = path.relative_to(PACKAGE).parts[0]
        for name in dlstudy_imports(path):
            inside = name == "dlstudy.server" or name.startswith("dlstudy.server.")
            if layer == "server":
                assert inside, f"{path.relative_to(PACKAGE)} imports {name}"
            elif layer != "cli":
                assert not inside, f"{path.relative_to(PACKAGE)} imports {name}"


def test_the_layer_check_sees_relative_imports() -> None:
    server = PACKAGE / "server" / "app.py"
    assert "dlstudy.server.qido" in dlstudy_imports(server)
    assert "dlstudy.server" in dlstudy_imports(PACKAGE / "cli" / "demo_cmd.py")
