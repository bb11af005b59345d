"""Cohort lists as spreadsheets and shells hand them over, through the installed CLI against
the embedded server: Excel's exports read as written, and stdin that is closed or not text is
a one-line usage error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import DLSTUDY, run_installed
from ..cohort_helpers import read_report
from ..fixtures.embedded_server import StartServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[SynthInstance]:
    """Two studies of two series of two small instances."""
    root = tmp_path_factory.mktemp("quirks")
    return generate(root, SynthSpec(studies=2, series=2, instances=2, size=4 * 1024, seed=21))


def excel_exports(study: str, series: str) -> dict[str, bytes]:
    """One study and one series of the other study, as spreadsheets save them."""
    bom = "\ufeff".encode()
    return {
        # European Excel: "CSV (semicolon)", its `sep=` line, CRLF, quoted cells
        "semicolon.csv": (
            f'sep=;\r\n"StudyInstanceUID";"SeriesInstanceUID";"Note"\r\n"{study}";;"a;b"\r\n'
            f';"{series}";"x"\r\n\r\n'
        ).encode(),
        # Excel "CSV UTF-8": a BOM; headers as DICOM names them in words
        "spaced.csv": bom
        + f"Study Instance UID,Series Instance UID\r\n{study},\r\n,{series}\r\n".encode(),
    }


@pytest.mark.parametrize("name", ["semicolon.csv", "spaced.csv"])
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_spreadsheet_exports_read_as_written(
    tmp_path: Path,
    cohort: list[SynthInstance],
    embedded_server: StartServer,
    name: str,
    via: str,
) -> None:
    url = embedded_server(cohort[0].path.parents[2])
    study, series = cohort[0].study_uid, cohort[-1].series_uid
    content = excel_exports(study, series)[name]
    listing = tmp_path / name
    listing.write_bytes(content)
    source = str(listing) if via == "file" else "-"
    done = subprocess.run(
        [DLSTUDY, "download", "--url", url, "-o", str(tmp_path / "out"), "--json",
         "--from-file", source],
        input=content if via == "stdin" else b"", capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    wanted = [i for i in cohort if i.study_uid == study or i.series_uid == series]
    assert json.loads(done.stdout)["instances"]["downloaded"] == len(wanted) == 6


def one_line_usage_error(done: subprocess.CompletedProcess[bytes], expected: str) -> None:
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith(f"dlstudy: error: {expected}"), stderr


def test_stdin_closed_or_not_text_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """No server needed: the list is read before any request."""
    args = ["download", "--url", "http://127.0.0.1:9/dicomweb", "-o", str(tmp_path / "out"),
            "--from-file", "-"]  # fmt: skip
    closed = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" <&-', DLSTUDY, *args],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    one_line_usage_error(closed, "cannot read --from-file -: standard input is closed")

    binary = subprocess.run(
        [DLSTUDY, *args], input=b"\x8e\xa3\xcd1.2.3\xff\n", capture_output=True, timeout=120,
        check=False,
    )  # fmt: skip
    one_line_usage_error(binary, "--from-file -: line 1: not UTF-8 text where a UID should be")


def test_a_cp1252_csv_reads_and_utf16_is_named(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """Excel's "CSV (semicolon)" is cp1252: a name with an umlaut beside the UIDs is no
    reason to refuse the list; only a UID cell that is not text is, naming its line. Excel's
    "Unicode Text" (UTF-16) is named as such."""
    url = embedded_server(cohort[0].path.parents[2])
    study = cohort[0].study_uid
    sheet = tmp_path / "cohort.csv"
    sheet.write_bytes(f"StudyInstanceUID;Patient\r\n{study};M\u00fcller\r\n".encode("cp1252"))
    out = tmp_path / "out"
    done = run_installed("download", "--url", url, "-o", str(out), "--json",
                         "--from-file", str(sheet))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["instances"]["downloaded"] == 4

    sheet.write_bytes(f"StudyInstanceUID;Patient\r\n{study};x\r\n1.2\u00fc;y\r\n".encode("cp1252"))
    done = run_installed("download", "--url", url, "-o", str(out), "--from-file", str(sheet))
    assert done.returncode == 2
    assert done.stderr == (
        f"dlstudy: error: --from-file {sheet}: line 3: not UTF-8 text where a "
        "StudyInstanceUID should be\n"
    )

    sheet.write_bytes(f"StudyInstanceUID\r\n{study}\r\n".encode("utf-16"))
    done = run_installed("download", "--url", url, "-o", str(out), "--from-file", str(sheet))
    assert done.returncode == 2
    assert done.stderr == (
        f'dlstudy: error: --from-file {sheet}: UTF-16 text (Excel\'s "Unicode Text"): save it '
        "as UTF-8\n"
    )


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("cohort.csv", "StudyInstanceUID;SeriesInstanceUID\n1.2.3;1.2.3.4\n"),
        ("uids.txt", "2.25.1\n2.25.2\n"),
        ("blank-first.txt", "\r\n# the cohort\r\n2.25.1\r\n"),
    ],
)
def test_utf16_without_a_byte_order_mark_is_named(
    tmp_path: Path, encoding: str, name: str, text: str
) -> None:
    """`iconv -t utf-16le` writes no BOM: a CSV was `line 1: a CSV needs a header row ...`
    and a list of UIDs `invalid UID '2\\x00.\\x00...'`. Both now say what the file is, as
    with a BOM; from a file and from stdin, before any request."""
    listing = tmp_path / name
    listing.write_bytes(text.encode(encoding))
    for source in (str(listing), "-"):
        done = subprocess.run(
            [DLSTUDY, "download", "--url", "http://127.0.0.1:9/dicomweb", "-o",
             str(tmp_path / "out"), "--from-file", source],
            input=listing.read_bytes(), capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.stderr.decode() == (
            f'dlstudy: error: --from-file {source}: UTF-16 text (Excel\'s "Unicode Text"): '
            "save it as UTF-8\n"
        )
        assert done.returncode == 2


def test_an_empty_csv_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "cohort.csv"
    empty.write_text("sep=;\r\n\r\n")
    done = run_installed(
        "download", "--url", "http://127.0.0.1:9/dicomweb", "-o", str(tmp_path / "out"),
        "--from-file", str(empty),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    expected = f"--from-file {empty} is empty: a CSV needs a header row and rows of UIDs"
    assert done.stderr == f"dlstudy: error: {expected}\n"


def test_a_plain_uid_found_nowhere_is_named_in_its_report_row(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """Every line of a list is in the report: a UID the server has at no level too, in the
    `study` column (the level asked first), so the report joins back to the list."""
    url = embedded_server(cohort[0].path.parents[2])
    listing = tmp_path / "uids.txt"
    listing.write_text(f"{cohort[0].study_uid}\n2.25.404\n")
    report = tmp_path / "landed.jsonl"
    done = run_installed(
        "download", "--url", url, "-o", str(tmp_path / "out"), "--json",
        "--from-file", str(listing), "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    failed = [row for row in read_report(report) if row["status"] == "failed"]
    assert [(row["study"], row["series"], row["sop"]) for row in failed] == [
        ("2.25.404", None, None)
    ]
    assert [f["study"] for f in json.loads(done.stdout)["failures"]] == ["2.25.404"]


def test_quoted_uids_read_as_their_uids(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """A UID as sheets and scripts wrap it, in a plain list, a CSV cell (Excel's `="..."`,
    which keeps a long number text) and a TCIA manifest, with spaces around."""
    url = embedded_server(cohort[0].path.parents[2])
    study, series = cohort[0].study_uid, cohort[-1].series_uid
    lists = {  # name: text, instances it names
        "uids.txt": (f"\"{study}\"\r\n '{series}' \r\n", 6),
        "cohort.csv": (
            f'StudyInstanceUID,SeriesInstanceUID\r\n="{study}",\r\n,"=""{series}"""\r\n',
            6,
        ),
        "manifest.tcia": (f'manifestVersion=3.0\nListOfSeriesToDownload=\n"{series}"\n', 2),
    }
    for name, (text, instances) in lists.items():
        listing = tmp_path / name
        listing.write_text(text)
        done = run_installed("download", "--url", url, "-o", str(tmp_path / f"{name}.out"),
                             "--json", "--from-file", str(listing))  # fmt: skip
        assert done.returncode == 0, (name, done.stderr)
        assert json.loads(done.stdout)["instances"]["downloaded"] == instances, name


def test_csvs_joined_with_cat_read_past_the_second_header(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """`cat week1.csv week2.csv > cohort.csv`: the second header row is a header, not a row of
    invalid UIDs."""
    url = embedded_server(cohort[0].path.parents[2])
    header = "StudyInstanceUID,SeriesInstanceUID\n"
    listing = tmp_path / "cohort.csv"
    listing.write_text(f"{header}{cohort[0].study_uid},\n{header},{cohort[-1].series_uid}\n")
    done = run_installed("download", "--url", url, "-o", str(tmp_path / "out"), "--json",
                         "--from-file", str(listing))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["instances"]["downloaded"] == 6


def test_csv_rows_without_a_uid_are_said_not_silently_dropped(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """A row with cells filled but no UID (a sheet that lost one) is skipped with a warning
    naming its line; blank rows are skipped without one."""
    url = embedded_server(cohort[0].path.parents[2])
    listing = tmp_path / "cohort.csv"
    listing.write_text(f"StudyInstanceUID,Note\n{cohort[0].study_uid},a\n,,\n,lost\n")
    done = run_installed("download", "--url", url, "-o", str(tmp_path / "out"),
                         "--from-file", str(listing))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"dlstudy: warning: --from-file {listing}: 1 row with no UID skipped (line 4)\n" in (
        done.stderr
    )


@pytest.mark.parametrize(
    ("rows", "line", "said"),
    [
        # A quote never closed: every later row was read into one cell, and the run went on
        # with the rows before it, exit 0, without a word.
        ('1.2.3,"bad\n1.2.4,ok\n1.2.5,ok\n', 2, 'a quote (") opened in this row is never closed'),
        # A cell past csv's 128 KiB limit: a `_csv.Error` traceback, exit 1.
        ("1" * 200_000 + ",x\n", 2, "a cell longer than 128 KiB (a quote never closed?)"),
        ('1.2.3,"x"y\n', 2, "a quoted cell goes on after its closing quote"),
    ],
)
def test_a_csv_row_that_breaks_the_format_is_named(
    tmp_path: Path, rows: str, line: int, said: str
) -> None:
    sheet = tmp_path / "cohort.csv"
    sheet.write_text("StudyInstanceUID,Name\n" + rows)
    done = run_installed(
        "download", "--from-file", str(sheet), "--url", "http://127.0.0.1:9/x",
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (error,) = done.stderr.splitlines()
    assert error.startswith(f"dlstudy: error: --from-file {sheet}: line {line}: {said}"), error


def test_a_quoted_cell_over_lines_is_read_and_said(tmp_path: Path) -> None:
    """Valid CSV (a spreadsheet's cell with a line break), or a stray quote that a later one
    closed, joining the rows between into one cell: read as CSV, and said."""
    sheet = tmp_path / "cohort.csv"
    sheet.write_text('StudyInstanceUID,Name\n1.2.3,"two\nlines"\n1.2.4,x\n')
    done = run_installed(
        "download", "--from-file", str(sheet), "--url", "http://127.0.0.1:9/x",
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # (nothing listens: the list was read whole)
    assert (
        "1 row with a quoted cell running over lines (line 2): check that no rows were "
        "joined into it"
    ) in done.stderr
