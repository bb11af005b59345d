"""What `query` (and `sync`) make of their options and of the server's answers, through the
installed CLI: which output format wins, filters given twice or empty, and server values with
control characters on a terminal or in a pipe."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..cli_helpers import run_installed
from ..fixtures.embedded_server import StartServer, SynthStudy
from ..fixtures.scripted_routes import Routes

pytestmark = pytest.mark.integration


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def form_of(stdout: str) -> str:
    """Which format `query` printed one study in."""
    first = stdout.splitlines()[0]
    if first.startswith("{"):
        json.loads(first)
        return "json"
    if first.startswith("study_uid,"):
        return "csv"
    if first.startswith("study_uid\t"):
        return "tsv"
    assert "," not in first and "\t" not in first, stdout
    return "uids"


@pytest.mark.parametrize(
    ("args", "env", "config", "expected"),
    [
        (["--json"], {"DLSTUDY_UIDS": "1"}, "", "json"),
        (["--csv"], {"DLSTUDY_UIDS": "1"}, "", "csv"),
        (["--json"], {}, "[defaults]\nuids = true\n", "json"),
        (["--uids"], {"DLSTUDY_JSON": "1"}, "[defaults]\ncsv = true\n", "uids"),
        ([], {"DLSTUDY_CSV": "1"}, "[defaults]\nuids = true\n", "csv"),
        ([], {}, "[defaults]\nuids = true\n", "uids"),
        ([], {}, "server = 'here'\n[defaults]\nuids = true\n[servers.here]\njson = true\n", "json"),
    ],
)
def test_a_format_given_at_a_higher_level_wins(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    args: list[str],
    env: dict[str, str],
    config: str,
    expected: str,
) -> None:
    """Command line > environment > config profile > [defaults], as for every option."""
    url = embedded_server(synth_study.root)
    conf = write(tmp_path / "c.toml", config)
    result = run_installed("query", "--url", url, "--config", str(conf), *args, env=env)
    assert result.returncode == 0, result.stderr
    assert form_of(result.stdout) == expected
    assert synth_study.study_uid in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "config", "message"),
    [
        (["--json", "--uids"], {}, "", "--json and --uids given on the command line"),
        ([], {"DLSTUDY_JSON": "1", "DLSTUDY_CSV": "1"}, "", "--json and --csv given in the env"),
        ([], {}, "[defaults]\ncsv = true\nuids = true\n", "--csv and --uids given in the config"),
    ],
)
def test_two_formats_at_the_same_level_are_a_usage_error(
    tmp_path: Path, args: list[str], env: dict[str, str], config: str, message: str
) -> None:
    conf = write(tmp_path / "c.toml", config)
    result = run_installed(
        "query", "--url", "http://127.0.0.1:9/x", "--config", str(conf), *args, env=env
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "choose one of --json, --csv, --uids" in result.stderr


def test_catalog_query_lets_the_command_line_format_win_too(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    db = str(tmp_path / "c.duckdb")
    pulled = run_installed("catalog", "pull", "--url", url, "--db", db, "--quiet")
    assert pulled.returncode == 0, pulled.stderr
    result = run_installed("catalog", "query", "--db", db, "--json", env={"DLSTUDY_UIDS": "1"})
    assert result.returncode == 0, result.stderr
    assert form_of(result.stdout) == "json"


CLOSED = "http://127.0.0.1:9/dicomweb"  # nothing listens: a run that got that far exits 3


def output_of(command: str, tmp_path: Path) -> list[str]:
    return ["-o", str(tmp_path / "o")] if command == "sync" else []


@pytest.mark.parametrize("command", ["query", "sync"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--study-date", "20260101", "--filter", "StudyDate=20250601"],
            "--study-date and --filter StudyDate=... both set StudyDate",
        ),
        (
            ["--modality", "CT", "--filter", "ModalitiesInStudy=MR"],
            "--modality and --filter ModalitiesInStudy=... both set ModalitiesInStudy",
        ),
        (
            ["--patient-id", "P1", "--filter", "(0010,0020)=P2"],
            "--patient-id and --filter PatientID=... both set PatientID",
        ),
    ],
)
def test_a_key_set_by_an_option_and_by_filter_is_a_usage_error(
    tmp_path: Path, command: str, args: list[str], message: str
) -> None:
    result = run_installed(command, "--url", CLOSED, *output_of(command, tmp_path), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("command", ["query", "sync"])
@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--study-date", ""], "", "--study-date is empty"),
        (["--patient-name", " "], "", "--patient-name is empty"),
        (["--patient-id", ""], "", "--patient-id is empty"),
        (["--accession", ""], "", "--accession is empty"),
        (["--modality", "CT", "--modality", ""], "", "--modality is empty"),
        (["--filter", "PatientSex="], "", "--filter PatientSex= is empty"),
        ([], "[defaults]\nstudy-date = ''\n", "--study-date is empty"),
    ],
)
def test_an_empty_filter_is_a_usage_error_not_every_study(
    tmp_path: Path, command: str, args: list[str], config: str, message: str
) -> None:
    """`sync --study-date "$DAY"` with DAY unset must not mirror the whole archive."""
    conf = write(tmp_path / "c.toml", config)
    result = run_installed(
        command, "--url", CLOSED, *output_of(command, tmp_path), "--config", str(conf), *args
    )
    assert result.returncode == 2, result.stderr
    assert f"dlstudy: error: {message}" in result.stderr


def test_an_empty_modality_of_download_is_a_usage_error(tmp_path: Path) -> None:
    result = run_installed("download", "1.2.3", "--url", CLOSED, "--modality", "")
    assert result.returncode == 2, result.stderr
    assert "dlstudy: error: --modality is empty" in result.stderr


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("CT ", "no spaces"),
        ("C*", "no wildcards (* ?)"),
        ("?T", "no wildcards (* ?)"),
        ("CT,MR", "one value (repeat --modality for more)"),
        ("CT\\MR", "one value (repeat --modality for more)"),
    ],
)
def test_a_download_modality_that_no_series_can_have_is_a_usage_error(value: str, why: str) -> None:
    """download's --modality is compared with each series' Modality as is: `'CT '`, `C*` or
    `CT,MR` (which query --modality hands the server to match) matched nothing, exit 4 with
    `no instance matched --modality CT ` (the space unseen)."""
    said = (
        "must be one modality such as CT, matched exactly against each series' Modality: "
        f"{why}, got {value!r}"
    )
    result = run_installed("download", "1.2.3", "--url", CLOSED, "--modality", value)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    from_env = run_installed("download", "1.2.3", "--url", CLOSED, env={"DLSTUDY_MODALITY": value})
    if " " not in value:  # (the variable's values are split at spaces)
        assert from_env.returncode == 2 and said in from_env.stderr, from_env.stderr


# What a hostile or broken archive may put in a study's description: an OSC sequence that
# retitles the terminal (ESC ] 0 ; ... BEL), a colour (CSI 31 m), a CR/LF and a C1 CSI (U+009B),
# and rich markup.
# ... and a right-to-left override and a line separator (a row reordered, or broken).
HOSTILE = "\x1b]0;pwned\x07\x1b[31mRED\r\nLINE2\x9b2J[bold]x[/bold]\x7f\u202egn\u2028p"
HOSTILE_SHOWN = "?]0;pwned??[31mRED??LINE2?2J[bold]x[/bold]??gn?p"


@pytest.fixture
def hostile_study(tmp_path: Path, embedded_server: StartServer) -> tuple[str, str]:
    """A served study whose StudyDescription is HOSTILE: (url, study UID)."""
    import warnings

    import pydicom

    from dlstudy.server.synth import SynthSpec, generate

    root = tmp_path / "hostile"
    instances = generate(root, SynthSpec(series=1, instances=2, size=2048, seed=7))
    for instance in instances:
        dataset = pydicom.dcmread(instance.path)
        dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: U+009B can be written
        dataset.StudyDescription = HOSTILE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns: LO holds no control characters
            dataset.save_as(instance.path)
    return embedded_server(root), instances[0].study_uid


def test_control_characters_from_the_server_are_shown_not_sent_to_the_terminal(
    hostile_study: tuple[str, str],
) -> None:
    from ..cli_helpers import DLSTUDY, run_on_a_terminal

    url, study = hostile_study
    code, drawn = run_on_a_terminal("query", "--url", url, columns=220)
    assert code == 0, drawn
    text = drawn.replace("\r\n", "\n")  # the terminal's own line ends
    for control in ("\x1b]", "\x07", "\x9b", "\r", "\x7f", "\u202e", "\u2028"):
        assert control not in text, (control, text)
    assert HOSTILE_SHOWN[:31] + "…" in text  # the description column: 32 characters at most
    lines = [line for line in text.splitlines() if study in line]
    assert len(lines) == 1, text  # the study's row stays one line

    narrow_code, narrow = run_on_a_terminal("query", "--url", url, columns=90)  # two lines
    assert narrow_code == 0, narrow
    assert "\x1b]" not in narrow and "\x07" not in narrow
    assert [line[:4] for line in narrow.splitlines() if "pwned?" in line] == ["    "]  # detail

    piped = run_installed("query", "--url", url)  # TSV: a header and one line for the study
    assert piped.returncode == 0, piped.stderr
    rows = [line.split("\t") for line in piped.stdout.split("\n") if line]
    assert len(rows) == 2 and len(rows[1]) == len(rows[0]), piped.stdout
    assert rows[1][rows[0].index("description")] == HOSTILE_SHOWN

    import csv
    import io
    import subprocess

    def raw(*args: str) -> bytes:  # bytes as written: no newline translation
        done = subprocess.run([DLSTUDY, *args], capture_output=True, check=True, timeout=60)
        return done.stdout

    listed = json.loads(raw("query", "--url", url, "--json"))
    assert listed["description"] == HOSTILE  # JSON escapes them: exactly as sent
    table = list(csv.DictReader(io.StringIO(raw("query", "--url", url, "--csv").decode(), "")))
    assert [row["description"] for row in table] == [HOSTILE]


def described_study(
    tmp_path: Path, embedded_server: StartServer, description: str
) -> tuple[str, list[Any]]:
    """A served study of two instances whose StudyDescription is `description`: (url, them)."""
    import pydicom

    from dlstudy.server.synth import SynthSpec, generate

    root = tmp_path / "source"
    instances = generate(root, SynthSpec(series=1, instances=2, size=2048, seed=8))
    for instance in instances:
        dataset = pydicom.dcmread(instance.path)
        dataset.StudyDescription = description
        dataset.save_as(instance.path)
    return embedded_server(root), instances


def test_a_lone_carriage_return_in_a_value_keeps_the_csv_one_row(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """A StudyDescription `CT\rCHEST`: csv.writer with "\n" line ends left the lone "\r"
    unquoted, every reader ended the row there, and `query --csv > cohort.csv` then
    `download --from-file cohort.csv` failed (exit 2, `invalid StudyInstanceUID 'CHEST'`); so
    did `catalog query --csv`."""
    import csv
    import io
    import subprocess

    from ..cli_helpers import DLSTUDY

    url, instances = described_study(tmp_path, embedded_server, "CT\rCHEST")
    db = tmp_path / "c.duckdb"
    assert run_installed("catalog", "pull", "--db", str(db), "--url", url).returncode == 0
    for args in (["query", "--url", url, "--csv"], ["catalog", "query", "--db", str(db), "--csv"]):
        written = subprocess.run([DLSTUDY, *args], capture_output=True, check=True, timeout=60)
        rows = list(csv.DictReader(io.StringIO(written.stdout.decode(), newline="")))
        assert [row["description"] for row in rows] == ["CT\rCHEST"], written.stdout
    cohort = tmp_path / "cohort.csv"
    cohort.write_bytes(
        subprocess.run([DLSTUDY, "query", "--url", url, "--csv"], capture_output=True,
                       check=True, timeout=60).stdout
    )  # fmt: skip
    out = tmp_path / "out"
    done = run_installed("download", "--from-file", str(cohort), "--url", url, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert len(list(out.rglob("*.dcm"))) == len(instances)


def test_querys_lines_piped_into_download_read_a_quote_as_text(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """`dlstudy query | dlstudy download --from-file -`: the tab-separated lines quote nothing,
    and a description `"CT" chest` was read as a quoted cell run on: exit 2, telling the user
    to double the quotes of dlstudy's own output."""
    import subprocess

    from ..cli_helpers import DLSTUDY

    url, instances = described_study(tmp_path, embedded_server, '"CT" chest')
    lines = subprocess.run([DLSTUDY, "query", "--url", url], capture_output=True, text=True,
                           check=True, timeout=60).stdout  # fmt: skip
    assert lines.startswith("study_uid\t") and '\t"CT" chest\t' in lines, lines
    out = tmp_path / "out"
    done = subprocess.run(
        [DLSTUDY, "download", "--from-file", "-", "--url", url, "-o", str(out)],
        input=lines, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(list(out.rglob("*.dcm"))) == len(instances)


def read_report(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as fp:
        return list(csv.DictReader(fp))


def test_sync_writes_a_report_of_what_it_downloaded_and_what_was_complete(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """A cron user's `sync --report`: one row per instance of every matching study, the
    complete ones (never handed to the download) as `present`, with their paths and digests."""
    from dlstudy.server.synth import SynthSpec, generate

    instances = generate(tmp_path / "src", SynthSpec(studies=2, series=1, instances=3, size=2048))
    first, second = dict.fromkeys(i.study_uid for i in instances)
    url = embedded_server(tmp_path / "src")
    out, report = tmp_path / "out", tmp_path / "landed.csv"
    done = run_installed("download", first, "--url", url, "-o", str(out), "--quiet")
    assert done.returncode == 0, done.stderr

    result = run_installed("sync", "--url", url, "-o", str(out), "--report", str(report), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sync"]["already_complete"] == 1
    rows = read_report(report)
    assert sorted((r["study"], r["status"]) for r in rows) == sorted(
        [(first, "present")] * 3 + [(second, "downloaded")] * 3
    )
    by_sop = {i.sop_uid: i for i in instances}
    for row in rows:
        assert Path(row["path"]).read_bytes() == by_sop[row["sop"]].path.read_bytes()
        assert row["digest"].startswith("blake3:") and int(row["size"]) == by_sop[row["sop"]].size

    quiet_night = run_installed("sync", "--url", url, "-o", str(out), "--report", str(report))
    assert quiet_night.returncode == 0, quiet_night.stderr
    assert sorted(r["status"] for r in read_report(report)) == ["present"] * 6

    wrong = run_installed("sync", "--url", url, "-o", str(out), "--report", str(tmp_path / "r.txt"))
    assert wrong.returncode == 2, wrong.stderr
    assert "must end in .csv or .jsonl" in wrong.stderr


def served_with_study_uid(
    tmp_path: Path, embedded_server: StartServer, uid: str
) -> tuple[str, str]:
    """Two served studies of one instance, the second's StudyInstanceUID rewritten to `uid`:
    (url, the first's UID)."""
    import warnings

    import pydicom

    from dlstudy.server.synth import SynthSpec, generate

    root = tmp_path / "bad-uid"
    instances = generate(root, SynthSpec(studies=2, series=1, instances=1, size=2048, seed=3))
    dataset = pydicom.dcmread(instances[1].path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns: not a valid UID
        dataset.StudyInstanceUID = uid
        dataset.save_as(instances[1].path)
    return embedded_server(root), instances[0].study_uid


def left_out(source: str, uid: str) -> str:
    """The warning of a study listed under `uid`, no UID, left out of a `--uids` list."""
    return (
        f"dlstudy: warning: {source} a study under a UID that is no UID, {uid!r} (a UID is "
        "digits and dots, at most 64 characters): left out, as download --from-file refuses a "
        "list holding one\n"
    )


def test_query_uids_leaves_out_a_uid_with_control_characters(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """`query --uids | xargs dlstudy download`: a UID with a line break or an ESC sequence in
    it is no UID; it is left out (it was printed as `1.2.3?[31m?4.5`, which no command takes),
    and the warning shows it escaped."""
    url, good = served_with_study_uid(tmp_path, embedded_server, "1.2.3\x1b[31m\n4.5")
    result = run_installed("query", "--url", url, "--uids")
    assert result.returncode == 1, result.stderr
    assert result.stdout == f"{good}\n"
    assert result.stderr == left_out("the server sent", "1.2.3\x1b[31m\n4.5")


def test_query_uids_piped_into_download_gets_every_valid_study(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """`query --uids | download --from-file -`, the documented pipe: a study UID of 73
    characters was printed, download refused the whole list (exit 2) and nothing came, not
    even the valid studies. It is left out, with a warning, and query exits 1; the other
    forms print it as sent, with the warning."""
    import subprocess

    from ..cli_helpers import DLSTUDY

    long_uid = "1.2.826.0.1.3680043.2.1125.1." + "1" * 44
    assert len(long_uid) == 73
    url, good = served_with_study_uid(tmp_path, embedded_server, long_uid)
    said = (
        f"dlstudy: warning: the server sent a study under a UID that is no UID, '{long_uid}' "
        "(a UID is digits and dots, at most 64 characters): "
    )
    listed = run_installed("query", "--url", url, "--uids")
    assert listed.returncode == 1, listed.stderr
    assert listed.stdout == f"{good}\n"
    assert listed.stderr == f"{said}left out, as download --from-file refuses a list holding one\n"
    out = tmp_path / "out"
    done = subprocess.run(
        [DLSTUDY, "download", "--from-file", "-", "--url", url, "-o", str(out)],
        input=listed.stdout, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [path.name for path in out.iterdir() if path.name != ".dlstudy"] == [good]

    as_json = run_installed("query", "--url", url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    printed = {json.loads(line)["study_uid"] for line in as_json.stdout.splitlines()}
    assert printed == {good, long_uid}
    assert as_json.stderr == f"{said}download --from-file refuses a list holding one\n"


def test_catalog_query_uids_leaves_out_a_catalogued_uid_that_is_no_uid(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """`catalog query --uids`, "as for query": a study the server listed under a UID of 73
    characters is catalogued as sent, and was printed, so that `--from-file -` refused the
    whole list. It is left out with the warning `query` gives, exit 1."""
    long_uid = "1.2.826.0.1.3680043.2.1125.1." + "1" * 44
    url, good = served_with_study_uid(tmp_path, embedded_server, long_uid)
    db = tmp_path / "archive.duckdb"
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(db))
    assert pulled.returncode == 0, pulled.stderr
    listed = run_installed("catalog", "query", "--db", str(db), "--uids")
    assert listed.returncode == 1, listed.stderr
    assert listed.stdout == f"{good}\n"
    assert listed.stderr == left_out("the catalog holds", long_uid)
    as_json = run_installed("catalog", "query", "--db", str(db), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert {json.loads(line)["study_uid"] for line in as_json.stdout.splitlines()} == {
        good,
        long_uid,
    }


def test_catalog_status_and_sql_show_no_control_character_and_no_uid_that_is_no_uid(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """`catalog status --uids`, the documented "what is left to fetch" pipe, listed a study UID
    with an ESC and a line break raw, and `--from-file` refused the list; its tab-separated
    lines, and `--sql`'s, wrote the ESC raw. Left out with a warning (exit 1), and `?` in
    tab-separated lines, as `query` does."""
    odd_uid = "1.2.3\x1b[31m\n4.5"
    url, good = served_with_study_uid(tmp_path, embedded_server, odd_uid)
    db = tmp_path / "archive.duckdb"
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(db))
    assert pulled.returncode == 0, pulled.stderr
    fresh = str(tmp_path / "fresh")
    left = run_installed("catalog", "status", "--db", str(db), "-o", fresh, "--uids")
    assert left.returncode == 1, left.stderr
    assert left.stdout == f"{good}\n"
    assert left.stderr == left_out("the catalog holds", odd_uid)
    tsv = run_installed("catalog", "status", "--db", str(db), "-o", fresh, "--state", "missing")
    assert tsv.returncode == 0, tsv.stderr
    assert "1.2.3?[31m?4.5\tmissing\t" in tsv.stdout and "\x1b" not in tsv.stdout
    sql = "SELECT study_uid FROM studies ORDER BY study_uid"
    for form in ((), ("--uids",)):
        rows = run_installed("catalog", "query", "--db", str(db), "--sql", sql, *form)
        assert rows.returncode == 0, rows.stderr
        assert sorted(rows.stdout.splitlines()[-2:]) == sorted([good, "1.2.3?[31m?4.5"])


def test_a_filter_value_with_spaces_can_come_from_the_environment(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """DLSTUDY_FILTER splits only before a KEY=, or at line breaks: a value may hold spaces."""
    from dlstudy.server.synth import SynthSpec, generate

    spec = SynthSpec(studies=1, series=1, instances=1, size=1024)
    ct = generate(tmp_path / "src", replace(spec, modality="CT", seed=1))[0].study_uid
    generate(tmp_path / "src", replace(spec, modality="MR", seed=2))
    url = embedded_server(tmp_path / "src")
    for value in (
        "StudyDescription=CT CHEST",
        "  StudyDescription=CT CHEST  ModalitiesInStudy=CT ",
        "StudyDescription=CT CHEST\nModalitiesInStudy=CT\n",
    ):
        result = run_installed("query", "--url", url, "--uids", env={"DLSTUDY_FILTER": value})
        assert result.returncode == 0, (value, result.stderr)
        assert result.stdout == f"{ct}\n", value
    # Line by line, a value may hold " KEY=" too: this one is no description of these studies.
    value = "StudyDescription=CT CHEST PatientSex=F\nModalitiesInStudy=CT"
    result = run_installed("query", "--url", url, "--uids", env={"DLSTUDY_FILTER": value})
    assert result.returncode == 4, result.stderr


@pytest.mark.parametrize("command", ["query", "sync"])
def test_a_filter_the_server_says_it_ignored_fails_the_search(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, command: str
) -> None:
    """A server that cannot match on a key drops it and says so in a `Warning: 299` (PS3.18),
    answering every study: listed (or mirrored by `sync`) as if they matched, they would not
    be the search asked for. Rows is no study-level key for the embedded server."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    result = run_installed(command, "--url", url, "--filter", "Rows=512", *output_of(command, out))
    assert result.returncode == 2, result.stderr
    assert synth_study.study_uid not in result.stdout
    assert "filters given" in result.stderr and "Rows" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not list(out.rglob("*.dcm"))


# Valid JSON (an escape of a lone surrogate), and no text any encoding can write.
LONE_SURROGATE = (
    b'[{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, '
    b'"00100010": {"vr": "PN", "Value": [{"Alphabetic": "X\\ud800Y"}]}}]'
)


@pytest.mark.parametrize(("args", "shown"), [([], "X?Y"), (["--csv"], "X?Y"), (["--json"], "")])
def test_a_name_stdout_cannot_encode_is_shown_as_a_question_mark(
    scripted: Routes, args: list[str], shown: str
) -> None:
    """A lone surrogate from the server, or a name outside stdout's encoding: one `?` each,
    the rest printed (a UnicodeEncodeError traceback, exit 1). JSON escapes them as sent."""
    scripted.get("/dicomweb/studies").mock(
        return_value=httpx.Response(
            200, headers={"Content-Type": "application/dicom+json"}, content=LONE_SURROGATE
        )
    )
    result = run_installed("query", "--url", scripted.base, *args)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "1.2.3" in result.stdout and shown in result.stdout
    if not shown:
        assert json.loads(result.stdout)["patient_name"] == "X\ud800Y"


def test_a_name_outside_an_ascii_stdout_is_shown_as_a_question_mark(
    hostile_study: tuple[str, str],
) -> None:
    url, study = hostile_study
    result = run_installed("query", "--url", url, "--csv", env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert study in result.stdout


def test_a_search_the_server_refuses_says_why(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A 400 names what the server could not read: its words follow the status (it was
    `HTTP 400 on URL` alone, the reason in the body unread)."""
    url = embedded_server(synth_study.root)
    result = run_installed("query", "--url", url, "--filter", "StudyDate=xyz")
    assert result.returncode == 3
    [line] = result.stderr.splitlines()
    assert line.startswith("dlstudy: error: QIDO search: HTTP 400 on ")
    assert line.endswith(
        ": StudyDate: cannot read 'xyz' as a date YYYYMMDD or a range of them (A-B, A-, -B)"
    )


def test_a_refusal_that_repeats_the_request_shows_no_secret(scripted: Routes) -> None:
    """A gateway's JSON refusal repeating the query with its key: the key is masked."""

    def refuse(request: httpx.Request) -> httpx.Response:
        said = {"error": {"code": 400, "message": f"bad request {request.url}"}}
        return httpx.Response(400, json=said)

    scripted.get("/dicomweb/studies").mock(side_effect=refuse)
    result = run_installed(
        "query", "--url", f"{scripted.base}?key=s3cr3tvalue", "--header", "X-Api-Key: k3yvalue"
    )
    assert result.returncode == 3
    assert "bad request http://" in result.stderr, result.stderr
    assert "s3cr3tvalue" not in result.stderr and "key=***" in result.stderr


@pytest.mark.parametrize(
    ("written", "listed"),
    [
        ("=山田^太郎", "山田^太郎"),  # ideographic alone, as Japanese sites may have it
        ("==やまだ^たろう", "やまだ^たろう"),  # phonetic alone
        ("Yamada^Tarou=山田^太郎", "Yamada^Tarou"),  # the alphabetic form first
        ("^=山田^太郎", "山田^太郎"),  # an alphabetic form of empty components is none
        ("DOE^JOHN\\DOE^J", "DOE^JOHN\\DOE^J"),  # two values
    ],
)
def test_query_lists_a_patient_name_in_any_of_its_forms(
    tmp_path: Path, embedded_server: StartServer, written: str, listed: str
) -> None:
    """A PN value without an alphabetic form was listed as no name (null), and of several
    values only the first: the name is the first form the value has, values joined by `\\`
    as DICOM writes them."""
    import pydicom

    from dlstudy.server.synth import SynthSpec, generate

    root = tmp_path / "names"
    instances = generate(root, SynthSpec(series=1, instances=1, size=1024, seed=3))
    dataset = pydicom.dcmread(instances[0].path)
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.PatientName = written
    dataset.save_as(instances[0].path)

    result = run_installed("query", "--url", embedded_server(root), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["patient_name"] == listed


def test_query_keeps_every_value_of_a_multi_valued_field(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """AccessionNumber `A\\B` came out of --json and --csv as `A`, PatientID `a\\b` as `a`:
    every value but the first lost, where the patient name and the modalities kept theirs.
    Each field's values are joined by `\\`, as DICOM writes them."""
    import csv
    import io

    import pydicom

    from dlstudy.server.synth import SynthSpec, generate

    root = tmp_path / "values"
    instances = generate(root, SynthSpec(series=1, instances=1, size=1024, seed=5))
    dataset = pydicom.dcmread(instances[0].path)
    dataset.AccessionNumber = ["A1", "B2"]
    dataset.PatientID = ["a", "b"]
    dataset.StudyDescription = ["CT", "CHEST"]
    dataset.save_as(instances[0].path)
    url = embedded_server(root)
    expected = {"accession": "A1\\B2", "patient_id": "a\\b", "description": "CT\\CHEST"}

    as_json = run_installed("query", "--url", url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    assert {key: listed[key] for key in expected} == expected
    as_csv = run_installed("query", "--url", url, "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    [row] = csv.DictReader(io.StringIO(as_csv.stdout))
    assert {key: row[key] for key in expected} == expected
    as_tsv = run_installed("query", "--url", url)
    header, line = (text.split("\t") for text in as_tsv.stdout.splitlines())
    assert {key: line[header.index(key)] for key in expected} == expected
