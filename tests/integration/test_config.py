"""The config file: where it is found, what it may hold, and precedence against env and flags."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from dlstudy.config import ConfigError, UnsetSecret, default_path, find, load

from ..cli_helpers import run_cli, run_installed, run_installed_as_a_user
from ..fixtures.embedded_server import StartServer, SynthStudy

KNOWN = {"url", "output", "concurrency", "mode", "token", "password", "ca_bundle", "modality"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- where the file is ------------------------------------------------------------------------


def test_default_path_follows_xdg_then_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_path({}, home, "linux") == home / ".config/dlstudy/config.toml"
    xdg = str(tmp_path / "xdg")
    assert default_path({"XDG_CONFIG_HOME": xdg}, home, "linux") == Path(xdg, "dlstudy/config.toml")
    # The XDG spec says a relative value is invalid and must be ignored.
    assert (
        default_path({"XDG_CONFIG_HOME": "rel"}, home, "linux")
        == home / ".config/dlstudy/config.toml"
    )
    appdata = str(tmp_path / "AppData")
    assert default_path({"APPDATA": appdata}, home, "win32") == Path(appdata, "dlstudy/config.toml")


def test_find_prefers_the_flag_then_the_environment_then_the_user_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert find(None, {}, home) is None
    user = write(home / ".config/dlstudy/config.toml", "")
    assert find(None, {}, home) == user
    named = write(tmp_path / "env.toml", "")
    assert find(None, {"DLSTUDY_CONFIG": str(named)}, home) == named
    flag = write(tmp_path / "flag.toml", "")
    assert find(flag, {"DLSTUDY_CONFIG": str(named)}, home) == flag


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        find(tmp_path / "missing.toml", {}, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        find(None, {"DLSTUDY_CONFIG": str(tmp_path / "nope.toml")}, tmp_path)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("# r\u00e9glages\n".encode("latin-1"), "(byte 0xe9 at offset 3)"),
        ("[defaults]\n".encode("utf-16"), "(byte 0xff at offset 0)"),
    ],
)
def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path, raw: bytes, said: str) -> None:
    """A Latin-1 or UTF-16 file (a Windows editor's) stopped every command with a
    UnicodeDecodeError traceback, exit 1."""
    config = tmp_path / "c.toml"
    config.write_bytes(raw)
    result = run_installed("query", "--url", "http://127.0.0.1:9/x", "--config", str(config))
    assert result.returncode == 2, result.stderr
    expected = f"dlstudy: error: config file {config} is not UTF-8 text {said}: save it as UTF-8"
    assert result.stderr.splitlines() == [expected]


def test_a_config_file_with_a_bom_a_pipe_or_a_device_is_read(tmp_path: Path) -> None:
    """UTF-8 with a byte-order mark (Notepad's) was "Invalid statement (at line 1, column
    1)"; `--config <(...)` (secrets kept off the disk) and /dev/null were "does not exist"."""
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf[defaults]\ntimeout = 'x'\n")
    pipe = tmp_path / "pipe.toml"
    os.mkfifo(pipe)
    feeder = subprocess.Popen(  # writes once, as a shell's <(...) does
        ["sh", "-c", f"printf '[defaults]\\ntimeout = \"y\"\\n' > {pipe}"]
    )
    url = ("--url", "http://127.0.0.1:9/x")
    try:
        for config, value in [(bom, "'x'"), (pipe, "'y'")]:
            result = run_installed("query", *url, "--config", str(config))
            assert result.returncode == 2, result.stderr
            assert f"timeout = {value} in {config}: must be a number" in result.stderr
    finally:
        feeder.kill()
        feeder.wait()
    result = run_installed("query", *url, "--config", "/dev/null")
    assert result.returncode == 3 and "connection refused by 127.0.0.1:9" in result.stderr
    for config, said in [(tmp_path, "is a folder, not a file"), ("/dev/zero", "is larger")]:
        result = run_installed("query", *url, "--config", str(config))
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("dlstudy: error: config file ") and str(config) in line, line
        assert said in line


# --- what it holds ----------------------------------------------------------------------------

SAMPLE = """
server = "pacs"

[defaults]
concurrency = 4
output = "studies"
mode = "series"

[servers.pacs]
url = "https://pacs.example.org/dicom-web"
ca-bundle = "~/ca.pem"
token_env = "PACS_TOKEN"
concurrency = 32

[servers.local]
url = "http://127.0.0.1:8042/dicom-web"
password_env = "LOCAL_PW"
output = "/data/local"
"""


def test_profile_overlays_defaults_with_secrets_from_the_environment(tmp_path: Path) -> None:
    config = load(write(tmp_path / "c.toml", SAMPLE))
    values = config.values(None, {"PACS_TOKEN": "t0k"}, known=KNOWN)
    assert values == {
        "concurrency": 32,
        "output": str(tmp_path / "studies"),  # relative to the file's folder
        "mode": "series",
        "url": "https://pacs.example.org/dicom-web",
        "ca_bundle": str(Path("~/ca.pem").expanduser()),
        "token": "t0k",
    }
    local = config.values("local", {"LOCAL_PW": "pw"}, known=KNOWN)
    assert local["password"] == "pw" and local["output"] == "/data/local"
    assert local["concurrency"] == 4


def test_a_missing_secret_variable_is_named(tmp_path: Path) -> None:
    """An unset variable is a marker naming it, an error where the secret is sent (the CLI,
    tests/integration/test_credentials.py): a withheld one need not be set."""
    config = load(write(tmp_path / "c.toml", SAMPLE))
    token = config.values(None, {}, known=KNOWN)["token"]
    assert token == UnsetSecret(
        f"token_env in [servers.pacs] of {config.path}: $PACS_TOKEN is not set"
    )


def test_only_defaults_without_a_default_server(tmp_path: Path) -> None:
    config = load(write(tmp_path / "c.toml", "[defaults]\nconcurrency = 2\n[servers.a]\nurl='x'\n"))
    assert config.values(None, {}, known=KNOWN) == {"concurrency": 2}
    assert config.values("a", {}, known=KNOWN) == {"concurrency": 2, "url": "x"}
    with pytest.raises(ConfigError, match=r"no server profile 'b' .*\(profiles: a\)"):
        config.values("b", {}, known=KNOWN)


def test_a_typo_in_any_profile_is_reported(tmp_path: Path) -> None:
    config = load(write(tmp_path / "c.toml", "[servers.a]\nurl='x'\n[servers.b]\nconcurency=3\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'concurency' in \[servers.b\]"):
        config.values("a", {}, known=KNOWN)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("url = 'x'", "unknown key 'url' at the top"),
        ("server = 'nope'", "names no \\[servers.nope\\] profile"),
        ("server = 3", "must be the name of a profile"),
        ("defaults = 3", "\\[defaults\\] .* must be a table"),
        ("[servers.a.tls]\nx = 1", "profiles do not nest"),
        ("[defaults.x]\ny = 1", "defaults do not nest"),
        ("[servers]\na = 1", "\\[servers.a\\] .* must be a table"),
        ("this is not toml", "c.toml"),
    ],
)
def test_malformed_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path / "c.toml", text))


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path)  # a folder


@pytest.mark.parametrize(
    "command",
    [["query"], ["download", "1.2.3", "-o", "out"], ["sync", "-o", "out"]],
)
def test_a_config_folder_that_cannot_be_looked_into_is_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    """Where the per-user config file would be cannot be checked (a folder of another user,
    mode 000, or a path too long: the latter as root can make it): every command stopped with
    a traceback from the lookup. Now one line naming the file, exit 2, before any request."""
    too_long = str(tmp_path / ("x" * 5000))
    result = run_installed(
        *command, "--url", f"http://127.0.0.1:{free_port()}",
        env={"XDG_CONFIG_HOME": too_long}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("dlstudy: error: cannot look for the per-user config file "), line
    assert line.endswith(
        ": File name too long; give --config, or set XDG_CONFIG_HOME or HOME to a folder this "
        "user can read"
    ), line[-200:]
    assert not (tmp_path / "out").exists()


def test_a_config_folder_of_another_user_is_one_line(tmp_path: Path) -> None:
    """The real case behind the test above: `~/.config/dlstudy` made `chmod 000` (another
    user's, on a shared home): a `PermissionError` traceback from the lookup."""
    folder = tmp_path / "config" / "dlstudy"
    folder.mkdir(parents=True)
    folder.chmod(0o000)
    try:
        result = run_installed_as_a_user(
            "query", "--url", f"http://127.0.0.1:{free_port()}",
            env={"XDG_CONFIG_HOME": str(tmp_path / "config")},
        )  # fmt: skip
    finally:
        folder.chmod(0o755)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    config = folder / "config.toml"
    assert line == (  # (it said "cannot read config file", as if one were there)
        f"dlstudy: error: cannot look for the per-user config file '{config}': Permission "
        "denied; give --config, or set XDG_CONFIG_HOME or HOME to a folder this user can read"
    )


# --- precedence through the real commands ------------------------------------------------------


def _run_download(tmp_path: Path, *args: str, env: dict[str, str | None]) -> dict[str, object]:
    """A download against a closed port: exit 3, and the JSON summary shows url/output/mode."""
    result = run_cli("download", "1.2.3", "--json", *args, env=env)
    assert result.exit_code == 3, result.output
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


@pytest.fixture
def layered(tmp_path: Path) -> tuple[Path, str]:
    """A user config file (found through XDG_CONFIG_HOME) with [defaults] and a profile."""
    url = f"http://127.0.0.1:{free_port()}/profile"
    write(
        tmp_path / "xdg/dlstudy/config.toml",
        f"""
server = "closed"
[defaults]
mode = "series"
output = "{tmp_path / "from-defaults"}"
[servers.closed]
url = "{url}"
mode = "study"
""",
    )
    return tmp_path, url


def test_precedence_flag_over_env_over_profile_over_defaults(layered: tuple[Path, str]) -> None:
    tmp_path, url = layered
    env: dict[str, str | None] = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}

    summary = _run_download(tmp_path, env=env)
    assert (summary["url"], summary["mode"]) == (url, "study")  # the profile
    assert summary["output"] == str(tmp_path / "from-defaults")  # [defaults]

    summary = _run_download(tmp_path, env={**env, "DLSTUDY_MODE": "instance"})
    assert summary["mode"] == "instance"  # environment over profile

    summary = _run_download(tmp_path, "--mode", "auto", env={**env, "DLSTUDY_MODE": "instance"})
    assert summary["mode"] == "auto"  # the flag wins, even when it repeats the built-in default

    other = f"http://127.0.0.1:{free_port()}/env"
    summary = _run_download(
        tmp_path, "-o", str(tmp_path / "flag"), env={**env, "DLSTUDY_URL": other}
    )
    assert (summary["url"], summary["output"]) == (other, str(tmp_path / "flag"))


def test_builtin_defaults_without_any_config(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/x"
    summary = _run_download(tmp_path, "--url", url, "-o", str(tmp_path / "o"), env={})
    assert summary["mode"] == "auto"


def test_server_flag_picks_a_profile_and_config_flag_a_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/second"
    config = write(
        tmp_path / "team.toml",
        f"[servers.first]\nurl = 'http://127.0.0.1:1/first'\n[servers.second]\nurl = '{url}'\n",
    )
    summary = _run_download(
        tmp_path, "--config", str(config), "--server", "second", "-o", str(tmp_path / "o"), env={}
    )
    assert summary["url"] == url
    summary = _run_download(
        tmp_path,
        "-o",
        str(tmp_path / "o"),
        env={"DLSTUDY_CONFIG": str(config), "DLSTUDY_SERVER": "second"},
    )
    assert summary["url"] == url


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("[servers.a]\nurl='http://x'", ("--server", "b"), "no server profile 'b'"),
        ("[defaults]\ntimeout = 'soon'", (), "timeout = 'soon' in"),
        ("[defaults]\nhttp = '4'", (), "--http must be one of auto, 1.1, 2, 3"),
        ("[defaults]\nflavour = 1", (), "unknown key 'flavour'"),
    ],
)
def test_config_mistakes_are_usage_errors(
    tmp_path: Path, text: str, args: tuple[str, ...], message: str
) -> None:
    config = write(tmp_path / "c.toml", text)
    result = run_cli("query", "--config", str(config), *args, "--url", "http://127.0.0.1:1/x")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "dlstudy: error:" in result.stderr


def test_server_without_a_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("query", "--server", "pacs")
    assert result.exit_code == 2
    assert "--server pacs: no config file" in result.stderr


def test_keys_of_other_commands_are_accepted(tmp_path: Path) -> None:
    """`mode` means nothing to `query`, but is no typo: a shared profile serves every command."""
    port = free_port()
    config = write(
        tmp_path / "c.toml", f"[defaults]\nmode = 'series'\nurl = 'http://127.0.0.1:{port}/x'\n"
    )
    result = run_cli("query", "--config", str(config))
    assert result.exit_code == 3, result.output
    assert "connection refused" in result.stderr


ROOT = Path(__file__).resolve().parents[2]


def example_config(source: str) -> str:
    """The config file users copy: the README's, or examples/config.toml."""
    if source == "readme":
        text = (ROOT / "README.md").read_text()
        return text.split("```toml\n", 1)[1].split("```", 1)[0]
    return (ROOT / "examples" / "config.toml").read_text()


@pytest.mark.integration
@pytest.mark.parametrize("source", ["readme", "examples"])
@pytest.mark.parametrize("command", ["download", "query", "sync", "bench"])
def test_a_config_made_for_every_command_serves_each_one(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    command: str,
    source: str,
) -> None:
    """The documented config, plus keys only some commands take (workers, log-format), its
    default profile pointed at the embedded server: the installed CLI runs every command with
    it, each taking the keys it knows (the CLI builds only the command it runs, so the check
    must know all of them)."""
    url = embedded_server(synth_study.root)
    text = example_config(source).replace("/data/studies", str(tmp_path / "out"))
    text = re.sub(r'(?m)^server = "pacs"', 'server = "here"', text)
    text = re.sub(r"(?m)^\[defaults\].*$", "[defaults]\nworkers = 1\nlog-format = 'text'", text)
    assert 'server = "here"' in text and "workers = 1" in text
    config = write(tmp_path / "c.toml", text + f"\n[servers.here]\nurl = '{url}'\n")
    args = {
        "download": ["download", synth_study.study_uid, "--quiet"],
        "query": ["query", "--uids"],
        "sync": ["sync", "--quiet"],
        "bench": ["bench", synth_study.study_uid, "--repeat", "1", "--json"],
    }[command]
    result = run_installed(*args, "--config", str(config))
    assert result.returncode == 0, result.stderr
    if command == "download":
        assert len(list((tmp_path / "out").rglob("*.dcm"))) == len(synth_study.instances)
    if command == "query":
        assert result.stdout.split() == [synth_study.study_uid]


def test_a_key_no_command_knows_is_still_an_error(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[defaults]\noutptu = 'x'\n")
    for command in (["query"], ["download", "1.2.3"], ["sync"], ["bench", "1.2.3"]):
        result = run_installed(*command, "--config", str(config), "--url", "http://127.0.0.1:9/x")
        assert result.returncode == 2, result.stderr
        assert f"unknown key 'outptu' in [defaults] of {config}" in result.stderr


@pytest.mark.integration
def test_keys_are_the_long_option_names_of_every_command_and_subcommand(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`json`, `csv` (not the internal json_output/csv_output), and the options of the catalog
    subcommands (`db`, `page-size`, `level`, `to`): a config holding them serves query, sync
    and download, and catalog pull takes its --db from it (relative to the file's folder)."""
    url = embedded_server(synth_study.root)
    shared = "db = 'pacs.duckdb'\npage-size = 50\nlevel = 'study'\nto = 'export.csv'\n"
    config = write(tmp_path / "conf/c.toml", f"[defaults]\nurl = '{url}'\n{shared}json = true\n")

    query = run_installed("query", "--config", str(config))
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)["study_uid"] == synth_study.study_uid

    out = tmp_path / "out"
    download = run_installed(
        "download", synth_study.study_uid, "-o", str(out), "--config", str(config)
    )
    assert download.returncode == 0, download.stderr
    assert json.loads(download.stdout)["instances"]["downloaded"] == len(synth_study.instances)
    sync = run_installed("sync", "-o", str(out), "--config", str(config))
    assert sync.returncode == 0, sync.stderr
    assert json.loads(sync.stdout)["sync"]["already_complete"] == 1

    pull = run_installed("catalog", "pull", "--config", str(config))
    assert pull.returncode == 0, pull.stderr
    assert json.loads(pull.stdout)["studies"] == 1
    assert (tmp_path / "conf/pacs.duckdb").is_file()

    as_csv = write(tmp_path / "csv.toml", f"[defaults]\nurl = '{url}'\ncsv = true\n")
    query = run_installed("query", "--config", str(as_csv))
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines()[0].startswith("study_uid,patient_id,")


def test_a_parameter_name_that_is_no_option_name_is_an_unknown_key(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[defaults]\njson_output = true\n")
    result = run_installed("query", "--config", str(config), "--url", "http://127.0.0.1:9/x")
    assert result.returncode == 2, result.stderr
    assert f"unknown key 'json_output' in [defaults] of {config}" in result.stderr


def test_catalog_pull_without_a_db_anywhere_is_a_usage_error(tmp_path: Path) -> None:
    result = run_installed("catalog", "pull", "--url", "http://127.0.0.1:9/x")
    assert result.returncode == 2, result.stderr
    assert (
        "Missing option '--db' (or DLSTUDY_DB, or db in the config file). "
        "(see 'dlstudy catalog pull --help')"
    ) in result.stderr


@pytest.mark.parametrize("key", ["from-file", "to", "chart", "keep"])
def test_every_path_key_is_relative_to_the_config_files_folder(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, key: str
) -> None:
    """`from-file`, `catalog export`'s `to` and `bench`'s `chart` and `keep` are paths like
    `output` or `db`: relative to the config file's folder, as usage.md says, not to wherever
    the command runs."""
    url = embedded_server(synth_study.root)
    folder, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(folder / "cohort.txt", synth_study.study_uid + "\n")
    names = {"from-file": "cohort.txt", "to": "studies.csv", "chart": "b.svg", "keep": "kept"}
    config = write(
        folder / "c.toml",
        f"[defaults]\nurl = '{url}'\ndb = 'pacs.duckdb'\noutput = 'out'\n{key} = '{names[key]}'\n",
    )
    bench = ["bench", synth_study.study_uid, "--repeat", "1", "-c", "1", "--http", "1.1"]
    commands = {
        "from-file": [["download", "--quiet"]],
        "to": [["catalog", "pull", "--quiet"], ["catalog", "export"]],
        "chart": [[*bench, "--strategy", "study"]],
        "keep": [[*bench, "--strategy", "study"]],
    }[key]
    for args in commands:
        result = run_installed(*args, "--config", str(config), cwd=elsewhere)
        assert result.returncode == 0, result.stderr
    assert list(elsewhere.iterdir()) == []
    if key == "from-file":
        assert len(list((folder / "out").rglob("*.dcm"))) == len(synth_study.instances)
    else:
        assert (folder / names[key]).exists()


def test_from_file_dash_in_the_config_file_still_reads_standard_input(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[defaults]\nfrom-file = '-'\n")
    result = run_installed("download", "--config", str(config), "--url", "http://127.0.0.1:9/x")
    assert result.returncode == 2
    assert "--from-file - names no study" in result.stderr, result.stderr


def test_a_path_in_a_dlstudy_variable_has_its_tilde_expanded(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """cron does not expand `~` in a crontab's variables: DLSTUDY_OUTPUT='~/mirror' wrote to a
    `./~/mirror` folder. Every path variable is expanded as the config file's paths are."""
    url = embedded_server(synth_study.root)
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(home / "cohort.txt", synth_study.study_uid + "\n")
    env = {
        "HOME": str(home),
        "DLSTUDY_URL": url,
        "DLSTUDY_OUTPUT": "~/mirror",
        "DLSTUDY_FROM_FILE": "~/cohort.txt",
        "DLSTUDY_REPORT": "~/report.csv",
        "DLSTUDY_LOG_FILE": "~/run.log",
        "DLSTUDY_DB": "~/pacs.duckdb",
        "DLSTUDY_TO": "~/studies.csv",
    }
    for args in (["download", "--quiet"], ["catalog", "pull", "--quiet"], ["catalog", "export"]):
        result = run_installed(*args, env=env, cwd=elsewhere)
        assert result.returncode == 0, result.stderr
    assert list(elsewhere.iterdir()) == []
    assert len(list((home / "mirror").rglob("*.dcm"))) == len(synth_study.instances)
    for name in ("report.csv", "run.log", "pacs.duckdb", "studies.csv"):
        assert (home / name).is_file(), name
    env = {"HOME": str(home), "DLSTUDY_CA_BUNDLE": "~/ca.pem"}
    result = run_installed("query", "--url", "https://127.0.0.1:9/x", env=env)
    assert result.returncode == 2
    assert result.stderr == f"dlstudy: error: --ca-bundle {home}/ca.pem: no such file\n"
