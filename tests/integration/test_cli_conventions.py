"""Conventions of the batch commands: an environment variable per option, examples that parse."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
import typer
from typer.testing import CliRunner

from dlstudy.cli.app import COMMANDS, app, build_app
from dlstudy.cli.connection import NO_ENVVAR
from dlstudy.config import load

from ..cli_helpers import (
    DLSTUDY,
    STOP_SIGNALS,
    assert_same_files,
    run_installed,
    run_installed_as_a_user,
    start_installed,
    stop_installed,
)
from ..fixtures.embedded_server import StartServer, SynthStudy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BATCH_COMMANDS = ("download", "query", "sync")


def command(name: str) -> Any:
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def parse(args: list[str]) -> dict[str, Any]:
    """Parse a command line like the CLI does, without running it: the params it yields."""
    group = typer.main.get_command(app)
    root = group.make_context("dlstudy", list(args), resilient_parsing=True)
    name = args[0]
    ctx = command(name).make_context(name, list(args[1:]), parent=root)
    params: dict[str, Any] = ctx.params
    return params


@pytest.mark.parametrize("name", BATCH_COMMANDS)
def test_every_option_has_its_environment_variable(name: str) -> None:
    for param in command(name).params:
        longs = [o for o in param.opts if o.startswith("--")]
        if not longs or longs[0] in NO_ENVVAR:
            continue
        expected = "DLSTUDY_" + longs[0][2:].upper().replace("-", "_")
        assert param.envvar == expected, f"{name} {longs[0]}: {param.envvar}"


def test_option_values_from_the_environment(tmp_path: Path) -> None:
    from ..cli_helpers import run_cli

    result = run_cli(
        "query",
        env={
            "DLSTUDY_URL": "http://127.0.0.1:1/x",
            "DLSTUDY_FILTER": "PatientSex=F NoSuchKeyword=1",
            "DLSTUDY_UIDS": "1",
        },
    )
    assert result.exit_code == 2
    assert "'NoSuchKeyword' is neither a DICOM keyword" in result.stderr


def test_example_config_loads_with_known_keys() -> None:
    known = {p.name for name in BATCH_COMMANDS for p in command(name).params if p.name}
    config = load(EXAMPLES / "config.toml")
    config.check_keys(known)
    values = config.values("orthanc", {"ORTHANC_PASSWORD": "pw"}, known=known)
    assert values["password"] == "pw" and values["output"] == "/data/studies"


def test_example_crontab_line_is_a_valid_sync() -> None:
    lines = [
        line
        for line in (EXAMPLES / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields) == 6 and fields[5].split()[0].endswith("/dlstudy")
    params = parse(shlex.split(fields[5])[1:])
    assert params["study_date"] == "7d" and params["log_format"] == "json" and params["quiet"]


def test_example_kubernetes_job_shards_by_completion_index() -> None:
    text = (EXAMPLES / "k8s-indexed-job.yaml").read_text()
    completions = re.search(r"^\s+completions: (\d+)$", text, re.M)
    count = re.search(r"name: DLSTUDY_SHARD_COUNT\n\s+value: \"(\d+)\"", text)
    assert completions and count and completions.group(1) == count.group(1)
    assert "completionMode: Indexed" in text
    block = text.split("          args:\n", 1)[1].split("          env:\n", 1)[0]
    args = [line.strip()[2:] for line in block.splitlines()]
    params = parse(args)
    assert params["shard"] == "auto" and params["from_file"] == "/cohort/uids.txt"


def test_example_slurm_script_is_valid_bash_with_a_valid_download() -> None:
    script = EXAMPLES / "slurm-array.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert re.search(r"^#SBATCH --array=\S+", text, re.M)
    call = text.split("dlstudy download", 1)[1].split(">", 1)[0].replace("\\\n", " ")

    def arguments(**variables: str) -> list[str]:
        """The call's words as bash expands them in a task with these variables."""
        printed = subprocess.run(
            ["bash", "-c", f"printf '%s\\0' {call}"],
            env={"SLURM_ARRAY_TASK_ID": "5", "out": "/data", "cohort": "c.txt", **variables},
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return printed.stdout.split("\0")[:-1]

    params = parse(["download", *arguments()])
    assert params["shard"] == "auto" and params["server"] == "pacs"
    assert params["output"] == Path("/data/shard-5")
    # A task resubmitted alone is given its shard (see the script's comment).
    assert parse(["download", *arguments(DLSTUDY_SHARD="6/16")])["shard"] == "6/16"


def test_main_exits_with_the_commands_status_and_flushed_output(tmp_path: Path) -> None:
    """main() skips the interpreter's teardown (os._exit): what was printed must still arrive,
    and the exit status must be the command's."""
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "dlstudy", "download", "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0 and "--workers" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dlstudy", "download", "1.2.3", "--url", "ftp://x",
         "-o", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--url must start with http:// or https://" in bad.stderr


def test_a_command_runs_with_the_collector_paced_and_the_start_up_frozen() -> None:
    """main() collects cycles at COLLECTOR_PACE and freezes what exists once the command is
    built (an atexit handler still runs, and sees the run's collector)."""
    import sys

    from dlstudy.cli.app import COLLECTOR_PACE

    script = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print(gc.get_threshold(), gc.get_freeze_count() > 1000))\n"
        "from dlstudy.cli.app import main\n"
        "sys.argv = ['dlstudy', 'query', '--help']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"{COLLECTOR_PACE} True"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_app_built_for_one_command_runs_it_as_the_whole_app_does(name: str) -> None:
    """main() builds only the command named on the command line (start-up); its options,
    help and errors must be the whole app's."""
    runner = CliRunner()
    for args in ([name, "--help"], [name, "--no-such-option"]):
        whole = runner.invoke(app, args, prog_name="dlstudy", env={"COLUMNS": "100"})
        alone = runner.invoke(build_app(name), args, prog_name="dlstudy", env={"COLUMNS": "100"})
        assert (alone.exit_code, alone.output) == (whole.exit_code, whole.output)
        assert f"dlstudy {name}" in whole.output
    one = typer.main.get_command(build_app(name))
    assert sorted(one.commands) == sorted(n for n, m in COMMANDS.items() if m == COMMANDS[name])  # type: ignore[attr-defined]


def test_usage_errors_are_one_line_naming_the_help_to_read() -> None:
    cases = [
        (["download", "--urll", "x"], "No such option: --urll", "dlstudy download --help"),
        # The variable named only when the value came from it, and in words of dlstudy's own
        # (it was `(env var: 'DLSTUDY_CONCURRENCY'): Input should be a valid integer, ...`).
        (["download", "1.2.3", "--url", "http://x", "-c", "abc"],
         "Invalid value for '--concurrency' / '-c': not a whole number (see",
         "dlstudy download --help"),
        (["nosuch"], "No such command 'nosuch'", "dlstudy --help"),
        (["catalog", "export", "--db", "x"], "Missing option '--to'",
         "'dlstudy catalog export --help'"),
        (["catalog", "nosuch"], "No such command 'nosuch'", "'dlstudy catalog --help'"),
        # The parser's own errors named no command: they pointed to `dlstudy --help`.
        (["query", "--url"], "Option '--url' requires an argument", "'dlstudy query --help'"),
        (["catalog", "pull", "--db"], "Option '--db' requires an argument",
         "'dlstudy catalog pull --help'"),
    ]  # fmt: skip
    for args, what, help_hint in cases:
        result = run_installed(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("dlstudy: error: ") and what in line and help_hint in line
    from_variable = run_installed(
        "download", "1.2.3", "--url", "http://x", env={"DLSTUDY_TIMEOUT": "0"}
    )
    assert "Invalid value for '--timeout' (env var: 'DLSTUDY_TIMEOUT'): must be a number" in (
        from_variable.stderr
    )


@pytest.mark.parametrize(
    ("args", "commands"), [([], ["download", "catalog"]), (["catalog"], ["pull"])]
)
def test_a_group_without_its_command_prints_its_help_and_no_error_line(
    args: list[str], commands: list[str]
) -> None:
    """The help is the answer, on stdout; exit 2 as for a usage error (a script running
    `dlstudy "$cmd"` with $cmd empty must not pass), and no empty `dlstudy: error:` line."""
    result = run_installed(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ""
    assert "Usage: dlstudy" in result.stdout
    assert all(re.search(rf"^\W*{name}\b", result.stdout, re.M) for name in commands)


@pytest.mark.parametrize("args", [["--help"], ["download", "--help"], ["catalog"], []])
def test_help_onto_a_full_disk_is_one_line_not_a_traceback(args: list[str]) -> None:
    """`dlstudy --help > FILE` on a full disk (/dev/full) was an OSError traceback from
    rich; it ends as any output that cannot be written does."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [DLSTUDY, *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "dlstudy: error: cannot write the output: No space left on device"
    ]


@pytest.mark.parametrize(
    ("args", "status"),
    [(["--help"], 0), (["download", "--help"], 0), (["catalog", "pull", "--help"], 0),
     ([], 2), (["catalog"], 2)],
)  # fmt: skip
def test_help_into_a_pipe_closed_early_ends_quietly(args: list[str], status: int) -> None:
    """`dlstudy --help | head -1`: rich met the closed pipe and exited 1. A reader that went
    away is no failure (exit 0, as for `query | head`); a group alone keeps its usage error's
    2. Nothing on stderr either way."""
    process = subprocess.Popen(
        [DLSTUDY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.close()  # before dlstudy, still importing, writes a byte
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert stderr == ""


@pytest.mark.parametrize("closed", [(1,), (2,), (0, 1, 2)], ids=[">&-", "2>&-", "all"])
def test_a_run_with_standard_streams_closed_goes_on_as_with_them_thrown_away(
    closed: tuple[int, ...], synth_study: SynthStudy, embedded_server: StartServer, tmp_path: Path
) -> None:
    """`dlstudy download ... >&- 2>&-` from cron: Python leaves a closed stream's `sys.stdout`
    or `sys.stderr` None. The summary's flush then ended a whole run in a traceback and exit 1,
    and with stderr closed nothing was fetched at all (progress asked None whether it was a
    terminal). The run's own status, files and report come out as with the streams on
    /dev/null."""
    url = embedded_server(synth_study.root)
    out, report = tmp_path / "out", tmp_path / "report.csv"
    argv = ["download", synth_study.study_uid, "--url", url, "-o", str(out), "--report"]

    def close_them() -> None:
        for fd in closed:
            os.close(fd)

    result = run_installed(*argv, str(report), preexec_fn=close_them)
    assert result.returncode == 0
    assert_same_files(synth_study.instances, out)
    assert len(report.read_text().splitlines()) == 1 + len(synth_study.instances)


@pytest.mark.parametrize("option", ["--show-completion", "--install-completion"])
def test_completion_onto_a_full_disk_or_a_closed_pipe_is_one_line_or_none(
    option: str, tmp_path: Path
) -> None:
    """`dlstudy --show-completion > FILE` on a full disk was an OSError traceback from typer
    (`--install-completion` too, after installing); into a pipe closed early, exit 1. They
    end as `--help` does. (HOME is the test's: --install-completion writes the shell's rc.)"""
    command = [DLSTUDY, option, "bash"]
    # The shell named, not detected from the processes above the test (typer's own switch):
    # under a runner with no shell among them, detection found none ("Shell  not supported").
    env = {**os.environ, "HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, env=env,
            check=False,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "dlstudy: error: cannot write the output: No space left on device"
    ]

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    process.stdout.close()  # before dlstudy, still importing, writes a byte
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stderr == ""


def test_the_reference_has_dlstudys_own_options_and_the_usage_lines_of_help() -> None:
    """docs/cli.md, "every command and option": `--version` was in no section, and its usage
    lines differed from `--help`'s (`STUDY_UID...` where an argument is optional)."""
    reference = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    assert "| `--version`, `-V` |" in reference
    for command in ("download", "serve", "synth"):
        usage = run_installed(command, "--help").stdout.split("Usage: ", 1)[1].split("\n")[0]
        assert f"`{usage.strip()}`" in reference


def test_version_names_dlstudy_and_libcurl() -> None:
    for flag in ("--version", "-V"):
        result = run_installed(flag)
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(r"dlstudy \S+ \(PycURL/\S+ libcurl/8\.\S+ .*\)\n", result.stdout)


def test_synth_into_a_file_and_serve_on_a_busy_port_say_so_in_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    result = run_installed("synth", str(a_file))
    assert result.returncode == 2
    assert result.stderr == f"dlstudy: error: synth: {a_file} is not a folder\n"
    assert a_file.read_text() == "mine"

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_installed("serve", str(tmp_path), "--port", str(port))
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if "error" in x]
    assert line == (
        f"dlstudy: error: serve: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another --port, or 0)"
    )


def test_synth_under_a_file_or_a_read_only_folder_is_a_usage_error(tmp_path: Path) -> None:
    """A file above OUT was exit 1 (`cannot write under ...: Not a directory`, once writing
    failed) where a file in OUT's place was exit 2: both are an unusable output folder."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    result = run_installed("synth", str(a_file / "sub"))
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr
        == f"dlstudy: error: synth: cannot write under {a_file}/sub: Not a directory\n"
    )
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    result = run_installed_as_a_user("synth", str(read_only))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"dlstudy: error: synth: cannot write under {read_only}: Permission denied\n"
    )
    assert list(read_only.iterdir()) == []


def test_synth_and_serve_escape_the_folder_name_in_their_lines(tmp_path: Path) -> None:
    """A folder named with a terminal escape and a line break went raw into `wrote ... under`
    and `serving ... at`: it recoloured the terminal and forged a line."""
    hostile = tmp_path / "e\x1b[31mvil\nDIR"
    escaped = f"{tmp_path}/e\\x1b[31mvil\\x0aDIR"
    result = run_installed("synth", str(hostile), "--series", "1", "--instances", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote 1 files, ")
    assert f" under {escaped}; 1 study: " in result.stdout
    assert len(result.stdout.splitlines()) == 1

    process = start_installed("serve", str(hostile), "--port", "0")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert re.fullmatch(
        rf"serving {re.escape(escaped)} at http://127\.0\.0\.1:\d+/dicomweb \(Ctrl-C to stop\)\n",
        line,
    ), line


def test_serve_says_it_cannot_listen_before_indexing_and_names_the_host(tmp_path: Path) -> None:
    """The folder was indexed first (minutes for a big one, its warnings printed), and only
    then the port found taken; a --host that does not resolve said `serve: Name or service not
    known`, naming nothing."""
    (tmp_path / "notes.txt").write_text("not DICOM: indexing would warn of it")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = run_installed("serve", str(tmp_path), "--port", str(port))
    unknown = run_installed("serve", str(tmp_path), "--host", "nohost.invalid", "--port", "0")
    assert (taken.returncode, unknown.returncode) == (1, 1)
    assert taken.stderr.splitlines() == [
        f"dlstudy: error: serve: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another --port, or 0)"
    ]
    (line,) = unknown.stderr.splitlines()
    assert line.startswith("dlstudy: error: serve: cannot listen on nohost.invalid:0: "), line
    assert line.endswith(" (--host must be an address or name of this machine)"), line


def test_synth_refuses_more_frames_than_its_size_holds(tmp_path: Path) -> None:
    """Every frame has a pixel at least: `--frames 100000` made 200 KB instances where --size
    said 64 KiB (`--frames 1000000000`: 2 GB each, 62 GB in a minute), and 3,000,000,000 a
    struct.error traceback."""
    out = tmp_path / "out"
    for frames in ("100000", "3000000000"):
        result = run_installed("synth", str(out), "--frames", frames, "--series", "1")
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"dlstudy: error: Invalid value: {frames} frames do not fit in 65536 bytes: at most "
            "one frame per 3 bytes (raise the size) (see 'dlstudy synth --help')\n"
        )
        assert not out.exists() or not list(out.rglob("*.dcm"))


def test_synth_writes_values_their_vr_allows(tmp_path: Path) -> None:
    """`--seed 100000000` wrote a 17-character AccessionNumber (SH holds 16), and `--modality
    ct` or `ÄÖ` a Modality no CS value may be (upper case ASCII), exit 0."""
    out = tmp_path / "out"
    done = run_installed("synth", str(out), "--seed", "100000000", "--series", "1",
                         "--instances", "1", "--studies", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for path in out.rglob("*.dcm"):
        assert 0 < len(pydicom.dcmread(path).AccessionNumber) <= 16
    for modality in ("ct", "\u00c4\u00d6"):
        refused = run_installed("synth", str(tmp_path / "other"), "--modality", modality)
        assert refused.returncode == 2, refused.stderr
        assert f"not a modality code: {modality!r} (upper case letters" in refused.stderr


@pytest.mark.parametrize(("signum", "status", "said"), STOP_SIGNALS)
def test_synth_stopped_part_way_leaves_only_whole_files(
    tmp_path: Path, signum: int, status: int, said: str
) -> None:
    """Ctrl-C left the file being written short under its final name (which `serve` indexes
    as an instance), and SIGTERM did too, exiting -15 without a word."""
    out = tmp_path / "out"
    code, stderr = stop_installed(
        "synth", str(out), "--series", "1", "--instances", "20000", "--size", "2000",
        signum=signum, ready=lambda: len(list(out.rglob("*.dcm"))) > 50,
    )  # fmt: skip
    assert code == status, stderr
    assert stderr.splitlines()[-1] == f"dlstudy: error: {said}; the files written so far are whole"
    files = list(out.rglob("*.dcm"))
    assert 50 < len(files) < 20000
    assert all(pydicom.dcmread(f).SOPInstanceUID == f.stem for f in files)
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix != ".dcm"]


@pytest.mark.parametrize("option", ["--studies", "--series", "--instances", "--size", "--frames"])
def test_synth_names_the_option_that_is_below_one(tmp_path: Path, option: str) -> None:
    """The line named the library's field, `SynthSpec.studies must be at least 1`, not the
    option given."""
    result = run_installed("synth", str(tmp_path / "out"), option, "0")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"dlstudy: error: Invalid value for '{option}': ")
    assert not (tmp_path / "out").exists()


def test_help_groups_the_options_and_names_their_values() -> None:
    result = run_installed("download", "--help", env={"COLUMNS": "120", "TERM": "dumb"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for panel in ("Connection", "Authentication", "What to fetch", "Behaviour", "Output",
                  "Configuration"):  # fmt: skip
        assert f"─ {panel} " in text, panel
    for shown in ("--url", "URL", "Required", "--http", "auto|1.1|2|3", "--timeout", "SECONDS"):
        assert shown in text, shown


HELP_PATHS = [[], ["catalog"], *([name] for name in COMMANDS), *(
    ["catalog", sub] for sub in ("pull", "query", "status", "export"))]  # fmt: skip


@pytest.mark.parametrize("path", HELP_PATHS, ids=lambda path: " ".join(path) or "dlstudy")
def test_help_shows_no_type_for_a_flag_and_names_arguments_plainly(path: list[str]) -> None:
    """A flag takes no value: `--json <bool>` read as if it took one. An argument is named as
    its docs name it (`{OUT}`, `[STUDY_UID]...`), not by its Python name (`{out}`)."""
    result = run_installed(*path, "--help", env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert not re.search(r"[{\[][a-z_]+[}\]]", usage), usage
    assert "......" not in usage and "...]..." not in usage, usage


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("dlstudy download --mode ", ["auto", "instance", "series", "study"]),
        ("dlstudy download --http ", ["auto", "1.1", "2", "3"]),
        ("dlstudy sync --log-format ", ["text", "json"]),
        ("dlstudy synth out --preset ", ["small", "ct", "mr", "many", "wsi"]),
    ],
)
def test_the_shell_completes_option_values(words: str, expected: list[str]) -> None:
    result = run_installed(
        env={
            "_DLSTUDY_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split())),
        }
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


def test_the_command_line_reference_is_up_to_date() -> None:
    """docs/cli.md is generated from the commands; regenerate it with
    `python -m dlstudy.cli.reference > docs/cli.md` after changing an option."""
    from dlstudy.cli.reference import markdown

    reference = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
    assert reference.read_text() == markdown(), "docs/cli.md is stale: regenerate it"


def test_every_option_says_what_it_does() -> None:
    """Every option of every command has a help text (docs/cli.md's meaning column), and the
    shared ones say what they do in the command that has them."""
    group = typer.main.get_command(app)
    commands = [([name], cmd) for name, cmd in group.commands.items()]  # type: ignore[attr-defined]
    while commands:
        path, cmd = commands.pop()
        sub = getattr(cmd, "commands", {})
        commands += [([*path, name], c) for name, c in sub.items()]
        for param in cmd.params:
            if param.param_type_name == "option":
                assert (param.help or "").strip(), f"dlstudy {' '.join(path)} {param.opts}"
    pull = run_installed("catalog", "pull", "--help", env={"COLUMNS": "200", "TERM": "dumb"})
    assert "Retries per QIDO page on transient errors" in pull.stdout
    download = run_installed("download", "--help", env={"COLUMNS": "200", "TERM": "dumb"})
    assert "one per CPU core, at most 4" not in " ".join(download.stdout.split())


def test_every_help_text_reads_in_help_as_written() -> None:
    """Help texts are rich markup: a bracket meant as text (`dlstudy[http3]`) that is not
    escaped is taken for a tag and vanishes from `--help`."""
    from rich.text import Text

    group = typer.main.get_command(app)
    commands = [([name], cmd) for name, cmd in group.commands.items()]  # type: ignore[attr-defined]
    while commands:
        path, cmd = commands.pop()
        commands += [([*path, name], c) for name, c in getattr(cmd, "commands", {}).items()]
        for text in [cmd.help, *(getattr(param, "help", None) for param in cmd.params)]:
            if text:
                shown = Text.from_markup(text).plain
                assert shown == text.replace("\\[", "["), f"dlstudy {' '.join(path)}: {text!r}"
    serve = run_installed("serve", "--help", env={"COLUMNS": "200", "TERM": "dumb"})
    assert "pip install 'dlstudy[http3]'" in serve.stdout
