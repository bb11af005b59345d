"""Cohort lists (dlstudy/cohort.py): TCIA manifests, CSV exports, plain lists; errors name lines."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from dlstudy.dicomweb.cohort import CohortError, CohortItem, parse_cohort, read_cohort
from dlstudy.errors import UsageError

TCIA = """downloadServerUrl=https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet
includeAnnotation=true
noOfrRetry=4
databasketId=manifest-1600709154662.tcia
manifestVersion=3.0
ListOfSeriesToDownload=
1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192
1.3.6.1.4.1.14519.5.2.1.6279.6001.101370605276577556143013894866
"""
SERIES_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
SERIES_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.101370605276577556143013894866"


def parse(text: str, name: str = "") -> list[CohortItem]:
    return parse_cohort(io.StringIO(text), label="list", name=name)


@pytest.mark.parametrize("name", ["manifest-1600709154662.tcia", "MANIFEST.TCIA", "-", ""])
def test_a_real_tcia_manifest_lists_its_series(name: str) -> None:
    items = parse(TCIA, name)
    assert [i.series_uid for i in items] == [SERIES_A, SERIES_B]
    assert all(i.level == "series" and i.study_uid is None for i in items)
    assert [i.where for i in items] == ["list: line 7", "list: line 8"]


def test_tcia_with_crlf_blank_lines_and_a_uid_on_the_marker_line() -> None:
    text = f"manifestVersion=3.0\r\nListOfSeriesToDownload={SERIES_A}\r\n\r\n{SERIES_B}\r\n"
    assert [i.series_uid for i in parse(text, "x.tcia")] == [SERIES_A, SERIES_B]


def test_tcia_errors_name_the_line() -> None:
    with pytest.raises(CohortError, match=r"list: line 9: invalid SeriesInstanceUID 'abc'"):
        parse(TCIA + "abc\n", "m.tcia")
    with pytest.raises(CohortError, match=r"list: line 2: expected key=value"):
        parse("manifestVersion=3.0\nnot a header\nListOfSeriesToDownload=\n", "m.tcia")
    with pytest.raises(CohortError, match="no ListOfSeriesToDownload= line"):
        parse("manifestVersion=3.0\n", "m.tcia")


def test_idc_style_csv_reads_its_uid_columns_in_any_case_and_order() -> None:
    text = (
        "collection_id,PatientID,seriesinstanceuid,StudyInstanceUID,SOPInstanceUID,Modality\n"
        "lidc_idri,LIDC-0001,1.2.3.1,1.2.3,,CT\n"
        '"nlst","100002","1.2.4.1","1.2.4","1.2.4.1.7","CT"\n'
        "x,y,,1.2.5,,\n"
        ",,,,,\n"
        "\n"
        "x,y,1.2.6.1\n"  # a short row: the missing cells are levels it does not name
    )
    items = parse(text, "idc.csv")
    assert [(i.study_uid, i.series_uid, i.sop_uid) for i in items] == [
        ("1.2.3", "1.2.3.1", None),
        ("1.2.4", "1.2.4.1", "1.2.4.1.7"),
        ("1.2.5", None, None),
        (None, "1.2.6.1", None),
    ]
    assert [i.level for i in items] == ["series", "instance", "study", "series"]
    assert [i.where for i in items] == [
        "list: line 2",
        "list: line 3",
        "list: line 4",
        "list: line 7",
    ]


@pytest.mark.parametrize("delimiter", [",", "\t", ";"])
def test_csv_is_found_by_its_header_whatever_the_delimiter(delimiter: str) -> None:
    text = f"Name{delimiter}SOPInstanceUID\nA{delimiter}1.2.3.4\n"
    items = parse(text, "-")
    assert items == [CohortItem(sop_uid="1.2.3.4", where="list: line 2")]


def test_csv_errors_name_the_line() -> None:
    with pytest.raises(CohortError, match="list: line 3: invalid StudyInstanceUID 'x1'"):
        parse("StudyInstanceUID\n1.2\nx1\n", "a.csv")
    with pytest.raises(CohortError, match="list: line 1: a CSV needs a header row"):
        parse("uid,name\n1.2,a\n", "a.csv")


def test_excels_csvs_joined_with_cat_read_as_one(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" begins each file with a BOM, its "CSV" in some locales with a
    `sep=;` line: the second file's header (or `sep=` line) was read as a row, exit 2
    (`invalid StudyInstanceUID '\ufeffStudyInstanceUID'`). Both are skipped as the first's."""
    path = tmp_path / "joined.csv"
    path.write_bytes(b"\xef\xbb\xbfStudyInstanceUID\r\n1.2\r\n" * 2)
    assert [item.study_uid for item in read_cohort(path)] == ["1.2", "1.2"]
    path.write_bytes(b"sep=;\nStudyInstanceUID;Name\n1.3;a\n" * 2)
    assert [item.study_uid for item in read_cohort(path)] == ["1.3", "1.3"]


def test_a_uid_column_named_twice_is_refused() -> None:
    """Two sheets pasted side by side: the second column's UIDs were dropped without a word
    (exit 0, half the cohort)."""
    for header in ("SeriesInstanceUID,SeriesInstanceUID", "StudyInstanceUID,Study Instance UID"):
        with pytest.raises(CohortError, match=r"list: line 1: columns '.*' and '.*' both name"):
            parse(f"{header}\n1.2,1.3\n", "a.csv")


def test_plain_list_keeps_the_level_open_and_skips_comments() -> None:
    items = parse("# cohort\n1.2.3\n\n  1.2.4  # a series\n")
    assert items == [
        CohortItem(any_uid="1.2.3", where="list: line 2"),
        CohortItem(any_uid="1.2.4", where="list: line 4"),
    ]
    assert items[0].level == "unknown" and items[0].describe() == "UID 1.2.3"
    with pytest.raises(CohortError, match=r"list: line 2: invalid UID '1\.2\.3 1\.2\.4'"):
        parse("1.2\n1.2.3 1.2.4\n")


def test_read_cohort_from_a_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(b"\xef\xbb\xbfSeriesInstanceUID\r\n1.2.3\r\n")
    assert read_cohort(path) == [CohortItem(series_uid="1.2.3", where=f"{path}: line 2")]
    with pytest.raises(CohortError, match="cannot read --from-file nope.txt"):
        read_cohort(tmp_path / "nope.txt", label="--from-file nope.txt")
    binary = tmp_path / "image.csv"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(CohortError, match="UTF-16 text"):
        read_cohort(binary)
    binary.write_bytes(b"SeriesInstanceUID\n1.2.\x8e3\n")
    with pytest.raises(CohortError, match="line 2: not UTF-8 text where a SeriesInstanceUID"):
        read_cohort(binary)


def test_item_keys_and_shard_keys() -> None:
    a = CohortItem(series_uid="1.2", where="f: line 1")
    b = CohortItem(series_uid="1.2", where="f: line 9")
    assert a.key == b.key and a.shard_key == "1.2"
    assert CohortItem(study_uid="1.1", series_uid="1.2").shard_key == "1.1"
    with pytest.raises(UsageError, match="names no UID"):
        CohortItem().check()
    with pytest.raises(UsageError, match="invalid UID"):
        CohortItem(sop_uid="../etc").check()


def test_tcia_header_comment_lines_are_skipped() -> None:
    text = "# exported for LIDC\n" + TCIA.replace("noOfrRetry=4\n", "noOfrRetry=4\n  # a note\n")
    assert "# a note" in text
    assert [i.series_uid for i in parse(text, "x.tcia")] == [
        i.series_uid for i in parse(TCIA, "x.tcia")
    ]
    assert [i.series_uid for i in parse(text, "-")] == [i.series_uid for i in parse(TCIA, "-")]
