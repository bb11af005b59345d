"""The README's first command, the demo, and docs that cannot drift from the CLI."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from dlstudy.cli.app import app

from ..cli_helpers import (
    DLSTUDY,
    STOP_SIGNALS,
    ctrl_c_as_at_a_terminal,
    run_cli,
    run_installed,
    summary_of,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.integration
def test_demo_downloads_and_verifies_every_byte(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    result = run_cli("demo", "--json", "--keep", str(keep))
    assert result.exit_code == 0, result.output
    assert "all 60 files byte-identical to the source" in result.stderr
    summary = summary_of(result)
    assert summary["instances"]["downloaded"] == 60
    assert summary["http_version"] == "HTTP/2"
    assert len(list(keep.rglob("*.dcm"))) == 60


@pytest.mark.parametrize("http", ["3", "2.0", ""])
def test_demo_checks_http_before_it_generates_anything(tmp_path: Path, http: str) -> None:
    """A version download refuses is refused by demo too, before it generates anything
    (it ran over HTTP/2 and exited 0); and HTTP/3, which the demo's plain http:// server
    cannot carry, in the demo's own words: download's (`--http must be one of auto, 1.1, 2,
    3`, then `--http 3 needs an https:// URL`) named a choice and a URL the demo has not."""
    keep = tmp_path / "kept"
    demo = run_installed("demo", "--http", http, "--keep", str(keep))
    download = run_installed("download", "1.2.3", "--url", "http://127.0.0.1:9/x", "--http", http)
    assert demo.returncode == download.returncode == 2, demo.stderr
    assert demo.stderr.splitlines() == [
        f"dlstudy: error: demo: --http must be auto, 1.1 or 2 (it serves http://), got {http!r}"
    ]
    assert not keep.exists()


def test_demo_refuses_a_keep_it_cannot_use_before_generating(tmp_path: Path) -> None:
    """--keep naming a file: the study was generated and served, then the download refused."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    demo = run_installed("demo", "--keep", str(a_file))
    assert demo.returncode == 2, demo.stderr
    assert demo.stderr.splitlines() == [
        f"dlstudy: error: --keep {str(a_file)!r} exists and is not a folder"
    ]
    assert a_file.read_text() == "mine\n"


def start_demo(scratch: Path, *extra: str, stdout: int) -> subprocess.Popen[str]:
    """`dlstudy demo --preset ct` (a study big enough to stop part way) with its temporary
    files under `scratch`, signals at their defaults as at a terminal; stderr piped."""
    scratch.mkdir()
    return subprocess.Popen(
        [DLSTUDY, "demo", "--preset", "ct", *extra],
        env={**os.environ, "TMPDIR": str(scratch)},
        preexec_fn=ctrl_c_as_at_a_terminal,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("signum", "status", "said"), STOP_SIGNALS[1:])  # SIGTERM, SIGHUP
@pytest.mark.parametrize("stage", ["dlstudy demo: generating", "dlstudy: downloading"])
def test_demo_stopped_by_sigterm_leaves_nothing_behind(
    tmp_path: Path, stage: str, signum: int, status: int, said: str
) -> None:
    """SIGTERM while the study was generated killed the demo mute (status -15), its temporary
    folder left in /tmp: hundreds of MB a run. While it downloaded, it exited 130, as for
    Ctrl-C. Now 143, a line, and the folder removed, as for Ctrl-C. SIGHUP (the terminal
    closed) likewise, 129 (it killed the demo mute at any stage)."""
    scratch = tmp_path / "tmp"
    demo = start_demo(scratch, stdout=subprocess.DEVNULL)
    assert demo.stderr is not None
    seen = [demo.stderr.readline()]
    while seen[-1] and not seen[-1].startswith(stage):
        seen.append(demo.stderr.readline())
    demo.send_signal(signum)
    rest = demo.communicate(timeout=60)[1]
    assert demo.returncode == status, seen + [rest]
    assert rest.splitlines()[-1] == f"dlstudy: error: {said}; its temporary files are removed"
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(("signum", "status", "said"), STOP_SIGNALS)
def test_demo_json_stopped_while_it_generates_prints_its_summary(
    tmp_path: Path, signum: int, status: int, said: str
) -> None:
    """`demo --json` stopped while it generated the study printed nothing on stdout, where
    every other command's --json prints its object with the stop in `error`."""
    scratch = tmp_path / "tmp"
    demo = start_demo(scratch, "--json", stdout=subprocess.PIPE)
    assert demo.stderr is not None
    while (line := demo.stderr.readline()) and not line.startswith("dlstudy demo: generating"):
        pass
    demo.send_signal(signum)
    stdout, stderr = demo.communicate(timeout=60)

    assert demo.returncode == status, stderr
    summary = json.loads(stdout)
    assert (summary["error"], summary["exit_status"]) == (said, status)
    assert summary["instances"]["downloaded"] == 0
    assert summary["output"].startswith(str(scratch))  # (removed, as every temporary file)
    assert list(scratch.iterdir()) == []


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dlstudy", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "download" in result.stdout and "demo" in result.stdout


def _commands() -> dict[str, list[str]]:
    """Every command of the app and the long option names it takes."""
    click_group = typer.main.get_command(app)
    commands: dict[str, list[str]] = {}
    for name, command in click_group.commands.items():  # type: ignore[attr-defined]
        options = []
        for param in command.params:
            options += [o for o in param.opts if o.startswith("--")]
        commands[name] = options
        for sub, subcommand in getattr(command, "commands", {}).items():  # `catalog pull`, ...
            commands[f"{name} {sub}"] = [
                o for param in subcommand.params for o in param.opts if o.startswith("--")
            ]
    return commands


# The hand-written pages that explain options (docs/cli.md lists them all, generated).
EXPLAINED = ("usage.md", "bench.md", "server.md", "catalog.md")


def test_every_command_is_in_the_readme_tour_and_every_option_explained() -> None:
    commands = _commands()
    assert {"download", "serve", "synth", "demo"} <= set(commands)
    headings = [line for line in README.splitlines() if line.startswith("### ")]
    docs = "\n".join((ROOT / "docs" / name).read_text() for name in EXPLAINED)
    table_rows = [line for line in docs.splitlines() if line.startswith("| `")]
    for name, options in commands.items():
        group = name.split()[0]  # `catalog pull` is toured as `catalog`
        assert any(f"`dlstudy {group}`" in h for h in headings), f"command {name} not in the tour"
        for option in options:
            pattern = re.compile(rf"(?<![\w-]){re.escape(option)}(?![\w-])")
            assert any(pattern.search(row) for row in table_rows), f"{name} {option} unexplained"


# The pages whose ```bash blocks show dlstudy command lines to copy.
EXAMPLE_PAGES = ("README.md", "docs/usage.md", "docs/catalog.md", "docs/bench.md", "docs/server.md")


def _example_command_lines() -> list[tuple[str, list[str]]]:
    """Each `dlstudy ...` of the pages' bash blocks (pipes split, continuations joined, shell
    comments dropped) as its page and its words after `dlstudy`."""
    found = []
    for page in EXAMPLE_PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)\n```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.lstrip().startswith("#"):
                    continue
                for segment in line.split("|"):
                    words = shlex.split(segment, comments=True)
                    programs = [word.rsplit("/", 1)[-1] for word in words]
                    if "dlstudy" in programs:
                        found.append((page, words[programs.index("dlstudy") + 1 :]))
    return found


def test_the_example_command_lines_use_options_their_commands_have() -> None:
    """An option renamed or removed fails here until the examples follow it."""
    commands = _commands()
    examples = _example_command_lines()
    assert len(examples) >= 25  # the blocks are still found
    for page, words in examples:
        if not words or words[0].startswith("-"):  # `dlstudy demo`'s install line, --version
            continue
        name = " ".join(words[:2]) if " ".join(words[:2]) in commands else words[0]
        assert name in commands, (page, words)
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in commands[name], (page, name, word)


def test_the_readme_is_a_manual_not_a_notebook() -> None:
    """A newcomer reads it in 15 minutes: the details live in docs/, linked from it."""
    assert len(README.splitlines()) <= 300
    for link in re.findall(r"\]\(((?:docs/|benchmarks/|CONTRIBUTING)[^)#]*)", README):
        assert (ROOT / link).exists(), link


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    assert blocks[0].endswith("dlstudy demo")
    test_command = blocks[1]
    assert test_command == "bash scripts/test.sh"
    assert test_command in (ROOT / ".ci" / "run").read_text()
    first_section = README.split("---", 1)[0]
    assert first_section.count("```bash") == 2


@pytest.mark.integration
@pytest.mark.slow
def test_readme_first_command_works_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """What a new user runs: a fresh venv, a plain install of this checkout, `dlstudy demo`."""
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".*_cache"),
    )
    command = README.split("```bash\n", 1)[1].split("\n```", 1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 60 files byte-identical to the source" in result.stderr


def test_the_system_install_upgrades_nothing_and_says_what_is_there() -> None:
    """scripts/install-system-deps.sh (the test command's first step): with everything in place
    it changes nothing and names every package it found; when something is missing it installs
    only that, with apt's --no-upgrade (it used to upgrade libssl3, curl, ... as it went)."""
    script = ROOT / "scripts" / "install-system-deps.sh"
    text = script.read_text()
    assert '"${MISSING[@]}"' in text and "--no-upgrade" in text
    assert '"${PACKAGES[@]}"; } </dev/null' not in text  # never the whole list
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr
    packages = re.search(r"^PACKAGES=\((.*)\)$", text, re.M)
    assert packages is not None
    for package in packages.group(1).split():
        assert f"{package} " in result.stdout, package


def test_server_pages_defaults_are_the_commands_defaults() -> None:
    """Each default docs/server.md states for serve, synth and demo (in backticks) is the one
    the command has (the demo's --concurrency was documented as 8 while it was 0, auto)."""
    click_group = typer.main.get_command(app)
    page = (ROOT / "docs" / "server.md").read_text(encoding="utf-8")
    sections = re.split(r"^## `dlstudy (\w+)", page, flags=re.M)[1:]
    checked = 0
    for name, text in zip(sections[::2], sections[1::2], strict=True):
        params = {
            opt: param
            for param in click_group.commands[name].params  # type: ignore[attr-defined]
            for opt in param.opts
        }
        for row in re.findall(r"^\| `([^|]*?)` \| `([^`|]*)` \|", text, flags=re.M):
            option = next((o for o in re.findall(r"--[\w-]+", row[0]) if o in params), None)
            if option is None:
                continue
            default = params[option].default
            if default is None:  # decided elsewhere (synth: the preset's value)
                continue
            said = _number(row[1]) if isinstance(default, int | float) else row[1]
            assert said == default, f"{name} {option}: docs say {row[1]}, is {default}"
            checked += 1
    assert checked >= 8  # the tables have not lost their defaults


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def test_each_server_command_option_is_in_its_own_table() -> None:
    """docs/server.md's table of serve, synth and demo each explain every option of that
    command (synth's --study-date was only in query's table, in usage.md)."""
    page = (ROOT / "docs" / "server.md").read_text(encoding="utf-8")
    parts = re.split(r"^## `dlstudy (\w+)", page, flags=re.M)[1:]
    sections = dict(zip(parts[::2], parts[1::2], strict=True))
    commands = _commands()
    for name in ("serve", "synth", "demo"):
        rows = [line for line in sections[name].splitlines() if line.startswith("| `")]
        for option in commands[name]:
            pattern = re.compile(rf"(?<![\w-]){re.escape(option)}(?![\w-])")
            assert any(pattern.search(row) for row in rows), f"{name} {option} not in its table"


def test_the_date_forms_the_error_names_are_documented() -> None:
    """Every form of --study-date that its error message offers is in docs/usage.md's row."""
    from dlstudy.dicomweb.search import parse_study_date
    from dlstudy.errors import UsageError

    with pytest.raises(UsageError) as error:
        parse_study_date("not a date")
    forms = re.findall(r"YYYY[-A-Z/]*|today|yesterday|Nd", str(error.value).split(" not ")[0])
    assert len(forms) >= 7, forms
    usage = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    (row,) = [line for line in usage.splitlines() if line.startswith("| `--study-date DATE`")]
    for form in forms:
        assert f"`{form}`" in row, form


def test_the_readme_names_every_package_the_system_install_installs() -> None:
    script = (ROOT / "scripts" / "install-system-deps.sh").read_text()
    packages = re.search(r"^PACKAGES=\((.*)\)$", script, re.M)
    assert packages is not None
    test_command = README.split("---", 1)[0]
    for package in packages.group(1).split():
        assert f"`{package}`" in test_command, package
