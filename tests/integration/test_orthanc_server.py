"""Integration tests against a real Orthanc + DICOMweb plugin (Debian 12 packages).

They prove the ``orthanc`` fixture works and pin the Orthanc behaviours dlstudy relies on
(measured values are in tests/ORTHANC_NOTES.md). Multipart bodies are parsed with
requests_toolbelt's MultipartDecoder, deliberately not with dlstudy's own parser.
"""

from __future__ import annotations

import io
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pydicom.data
import pytest
from requests_toolbelt.multipart.decoder import MultipartDecoder

from tests.fixtures.orthanc import OrthancError, OrthancServer

pytestmark = pytest.mark.integration

# pydicom's bundled test files. Not pydicom.data.get_testdata_files(): it also tries to download
# pydicom-data files from GitHub (15 s of failed attempts offline, then a UserWarning that
# filterwarnings=error turns into a failure; online it would fetch MBs on every run).
PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
# Valid-looking JPEG file that Orthanc 1.10.1 spends 5-7 s on before rejecting it with 400.
SLOW_TO_REJECT = {"SC_rgb_jpeg.dcm"}

ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ANY_TS_UNQUOTED = "multipart/related; type=application/dicom; transfer-syntax=*"
NO_TS = 'multipart/related; type="application/dicom"'
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
# Orthanc: two UUIDs joined by "-", cut to 70 chars, never quoted.
CONTENT_TYPE_RE = re.compile(
    r'^multipart/related; type="application/dicom"; boundary=(?P<b>[0-9a-f-]{70})$'
)


@dataclass(frozen=True)
class Stored:
    path: Path
    orthanc_id: str
    orthanc_study: str  # Orthanc's study ID: hash of PatientID + StudyInstanceUID
    study: str
    series: str
    sop: str
    transfer_syntax: str
    data: bytes  # what Orthanc stored (GET /instances/{id}/file)

    def instance_path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class Corpus:
    stored: list[Stored]  # one per Orthanc instance ("Success" uploads)
    rejected: dict[str, tuple[int, str]]  # file name -> (status, Orthanc's message)
    already_stored: list[str]  # files whose patient/study/series/SOP was already there
    upload_seconds: float

    @property
    def ids(self) -> set[str]:
        return {s.orthanc_id for s in self.stored}

    def servable(self) -> list[Stored]:
        """Instances WADO-RS can address: SOP UIDs stored once (see test_duplicate_uids…)."""
        counts = Counter(s.sop for s in self.stored)
        return [s for s in self.stored if counts[s.sop] == 1]

    def qido_study_uids(self) -> list[str]:
        """One entry per Orthanc study: a StudyInstanceUID under two PatientIDs comes twice."""
        return sorted({s.orthanc_study: s.study for s in self.stored}.values())

    def by_ts(self, *syntaxes: str) -> Stored:
        found = [s for s in self.servable() if s.transfer_syntax in syntaxes]
        assert found, f"no stored test file with transfer syntax {syntaxes}"
        return found[0]

    def studies(self) -> dict[str, list[Stored]]:
        """StudyInstanceUID -> instances, for the UIDs WADO-RS can address (one Orthanc study)."""
        out: dict[str, list[Stored]] = {}
        for s in self.stored:
            out.setdefault(s.study, []).append(s)
        return {
            uid: members
            for uid, members in out.items()
            if len({m.orthanc_study for m in members}) == 1
        }


def _upload_corpus(orthanc: OrthancServer) -> Corpus:
    orthanc.reset()
    files = sorted(p for p in PYDICOM_TEST_FILES.glob("*.dcm") if p.name not in SLOW_TO_REJECT)
    assert len(files) > 20, f"pydicom test files not found in {PYDICOM_TEST_FILES}"
    stored, rejected, already = [], {}, []
    started = time.monotonic()
    for path in files:
        try:
            answer = orthanc.upload(path)
        except OrthancError as e:
            rejected[path.name] = (e.status_code, e.body)
            continue
        if answer["Status"] == "AlreadyStored":
            already.append(path.name)
            continue
        assert answer["Status"] == "Success", answer
        oid = answer["ID"]
        tags = orthanc.client.get(f"/instances/{oid}/simplified-tags").json()
        ts = orthanc.client.get(f"/instances/{oid}/metadata/TransferSyntax").text
        stored.append(
            Stored(
                path=path,
                orthanc_id=oid,
                orthanc_study=answer["ParentStudy"],
                study=tags["StudyInstanceUID"],
                series=tags["SeriesInstanceUID"],
                sop=tags["SOPInstanceUID"],
                transfer_syntax=ts,
                data=orthanc.stored_file(oid),
            )
        )
    return Corpus(stored, rejected, already, time.monotonic() - started)


@pytest.fixture(scope="module")
def _corpus_cache(orthanc: OrthancServer) -> list[Corpus]:
    return [_upload_corpus(orthanc)]


@pytest.fixture
def corpus(orthanc: OrthancServer, _corpus_cache: list[Corpus]) -> Corpus:
    """The pydicom files in Orthanc; re-uploaded if another test reset or changed the server."""
    if set(orthanc.client.get("/instances").json()) != _corpus_cache[0].ids:
        _corpus_cache[0] = _upload_corpus(orthanc)
    return _corpus_cache[0]


@pytest.fixture
def http(orthanc: OrthancServer) -> Iterator[httpx.Client]:
    """Plain client on the DICOMweb root; identity encoding so we see Orthanc's raw framing."""
    with httpx.Client(
        base_url=orthanc.dicomweb_url, timeout=30.0, headers={"Accept-Encoding": "identity"}
    ) as client:
        yield client


def _parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    decoder = MultipartDecoder(response.content, response.headers["content-type"])
    return [
        ({k.decode(): v.decode() for k, v in part.headers.items()}, part.content)
        for part in decoder.parts
    ]


def _transfer_syntax(data: bytes) -> str:
    return str(
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    )


# --- the fixture itself ---------------------------------------------------------------------------


def test_fixture_urls_version_and_config(orthanc: OrthancServer) -> None:
    assert orthanc.base_url == f"http://127.0.0.1:{orthanc.port}"
    assert orthanc.dicomweb_url == f"{orthanc.base_url}/dicom-web"
    system = orthanc.client.get("/system").json()
    assert system["Name"] == "dlstudy-tests"
    assert system["DicomPort"] == 0  # DICOM server disabled
    assert orthanc.startup_seconds < 10
    # Debian 12 ships these; a new version means re-measuring tests/ORTHANC_NOTES.md.
    assert (orthanc.version.orthanc, orthanc.version.dicomweb) == ("1.10.1", "1.7"), str(
        orthanc.version
    )
    assert orthanc.config["StorageDirectory"].startswith(str(orthanc.workdir))
    assert "Orthanc has started" in orthanc.log_path.read_text()


def test_fixture_upload_stored_file_find_instance_reset(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    orthanc.reset()
    path = PYDICOM_TEST_FILES / "CT_small.dcm"
    answer = orthanc.upload(path)
    assert answer["Status"] == "Success"
    assert set(answer) >= {"ID", "ParentStudy", "ParentSeries", "ParentPatient", "Path"}
    assert orthanc.upload(path)["Status"] == "AlreadyStored"
    assert orthanc.stored_file(answer["ID"]) == path.read_bytes()  # stored byte for byte
    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert orthanc.find_instance(sop) == answer["ID"]
    with pytest.raises(LookupError):
        orthanc.find_instance("1.2.3.4.5.6.7.8.9")
    many = orthanc.upload_many([path, PYDICOM_TEST_FILES / "MR_small.dcm"])
    assert [a["Status"] for a in many] == ["AlreadyStored", "Success"]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(OrthancError) as excinfo:
        orthanc.upload(junk)
    assert excinfo.value.status_code == 400
    assert orthanc.upload_many([junk], skip_rejected=True) == []
    orthanc.reset()
    assert orthanc.client.get("/instances").json() == []
    assert orthanc.client.get("/dicom-web/studies").json() == []


# --- uploads --------------------------------------------------------------------------------------


def test_upload_of_pydicom_files_keeps_what_orthanc_accepts(corpus: Corpus) -> None:
    assert len(corpus.stored) >= 30
    assert corpus.already_stored, "pydicom ships several files with the same UIDs"
    assert corpus.rejected, "pydicom ships files Orthanc refuses"
    # 400 "Cannot parse an invalid DICOM file" (no meta, truncated);
    # 404 "Inexistent tag" (no Study/Series/SOP Instance UID).
    assert {status for status, _ in corpus.rejected.values()} <= {400, 404}
    if "no_meta.dcm" in corpus.rejected:
        assert corpus.rejected["no_meta.dcm"][0] == 400
    if "JPEGLSNearLossless_08.dcm" in corpus.rejected:
        assert corpus.rejected["JPEGLSNearLossless_08.dcm"][0] == 404
    assert corpus.upload_seconds < 20
    for s in corpus.stored:
        if s.data != s.path.read_bytes():  # Orthanc keeps the bytes it was sent
            pytest.fail(f"Orthanc rewrote {s.path.name} on upload")
    syntaxes = {s.transfer_syntax for s in corpus.stored}
    assert EXPLICIT_VR_LE in syntaxes and JPEG_BASELINE in syntaxes
    assert syntaxes & set(JPEG2000)


# --- QIDO-RS --------------------------------------------------------------------------------------


def _study_uids(answer: list[dict[str, dict[str, list[str]]]]) -> list[str]:
    return [item["0020000D"]["Value"][0] for item in answer]


def test_qido_lists_all_studies(corpus: Corpus, http: httpx.Client) -> None:
    response = http.get("/studies")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert "warning" not in response.headers
    assert sorted(_study_uids(response.json())) == corpus.qido_study_uids()


def test_qido_limit_and_offset_are_honoured(corpus: Corpus, http: httpx.Client) -> None:
    everything = _study_uids(http.get("/studies").json())
    assert len(everything) >= 10
    assert _study_uids(http.get("/studies", params={"limit": 3}).json()) == everything[:3]
    page2 = _study_uids(http.get("/studies", params={"limit": 3, "offset": 3}).json())
    assert page2 == everything[3:6]  # same order every time: paging is stable
    paged: list[str] = []
    for offset in range(0, len(everything) + 5, 4):
        paged += _study_uids(http.get("/studies", params={"limit": 4, "offset": offset}).json())
    assert paged == everything
    # limit=0 means "no limit"; past the end and no match are 200 + [] (never 204).
    assert _study_uids(http.get("/studies", params={"limit": 0}).json()) == everything
    past = http.get("/studies", params={"offset": len(everything) + 100})
    assert (past.status_code, past.json()) == (200, [])
    none = http.get("/studies", params={"StudyInstanceUID": "1.2.3.4.5"})
    assert (none.status_code, none.json()) == (200, [])


def test_qido_retrieve_url_follows_request_host(corpus: Corpus, http: httpx.Client) -> None:
    item = http.get("/studies", params={"limit": 1}).json()[0]
    uid = item["0020000D"]["Value"][0]
    assert item["00081190"] == {"vr": "UR", "Value": [f"{http.base_url}studies/{uid}"]}


# --- WADO-RS retrieve -----------------------------------------------------------------------------


@pytest.mark.parametrize("accept", ["application/dicom", "application/dicom; transfer-syntax=*"])
def test_single_part_instance_is_400(corpus: Corpus, http: httpx.Client, accept: str) -> None:
    s = corpus.by_ts(EXPLICIT_VR_LE)
    response = http.get(s.instance_path(), headers={"Accept": accept})
    assert response.status_code == 400  # not 406
    assert "content-type" not in response.headers  # Orthanc's error bodies are untyped JSON
    assert response.json()["HttpStatus"] == 400
    assert "cannot generate the following content type" in response.json()["Details"]


def test_multipart_instance_returns_stored_bytes_for_every_transfer_syntax(
    corpus: Corpus, http: httpx.Client
) -> None:
    checked: Counter[str] = Counter()
    for s in corpus.servable():
        response = http.get(s.instance_path(), headers={"Accept": ANY_TS})
        assert response.status_code == 200, (s.path.name, response.text)
        content_type = CONTENT_TYPE_RE.match(response.headers["content-type"])
        assert content_type, response.headers
        assert response.headers["content-length"] == str(len(response.content))
        assert response.headers["connection"] == "keep-alive"
        assert response.headers["keep-alive"] == "timeout=1"
        boundary = content_type["b"]
        assert response.content.startswith(f"--{boundary}\r\n".encode())  # no preamble
        assert response.content.endswith(f"\r\n--{boundary}--\r\n".encode())
        ((headers, body),) = _parts(response)
        assert headers == {
            "Content-Type": "application/dicom",
            "Content-Length": str(len(s.data)),
            "MIME-Version": "1.0",
        }
        assert body == s.data, s.path.name
        checked[s.transfer_syntax] += 1
    assert len(checked) >= 5, checked  # several transfer syntaxes, incl. JPEG and JPEG 2000


@pytest.mark.parametrize("level", ["series", "study"])
def test_multipart_series_and_study_return_stored_bytes(
    corpus: Corpus, orthanc: OrthancServer, level: str
) -> None:
    """Framing depends on the number of instances, not the level: one instance is buffered
    (Content-Length, keep-alive, gzip if accepted), two or more are streamed until the connection
    closes (no Content-Length, no chunking, Connection: close, never gzip)."""
    shapes: Counter[int] = Counter()
    # Default httpx Accept-Encoding (gzip, deflate), as a plain client would send.
    with httpx.Client(base_url=orthanc.dicomweb_url, timeout=30.0) as client:
        for study, members in corpus.studies().items():
            groups: dict[str, list[Stored]] = {}
            for s in members:
                key = f"/studies/{study}" + (f"/series/{s.series}" if level == "series" else "")
                groups.setdefault(key, []).append(s)
            for url, expected in groups.items():
                response = client.get(url, headers={"Accept": ANY_TS})
                assert response.status_code == 200, (url, response.text)
                assert CONTENT_TYPE_RE.match(response.headers["content-type"])
                if len(expected) == 1:
                    assert response.headers["connection"] == "keep-alive"
                    assert response.headers["content-encoding"] == "gzip"
                    assert "content-length" in response.headers
                else:
                    assert response.headers["connection"] == "close"
                    assert "content-length" not in response.headers
                    assert "content-encoding" not in response.headers
                    assert "transfer-encoding" not in response.headers
                shapes[min(len(expected), 2)] += 1
                parts = _parts(response)
                assert all(h["Content-Length"] == str(len(b)) for h, b in parts)
                assert sorted(b for _, b in parts) == sorted(s.data for s in expected)
    assert shapes[1] and shapes[2], shapes  # both framings exercised


def test_instance_level_is_gzipped_when_client_accepts_it(
    corpus: Corpus, orthanc: OrthancServer
) -> None:
    s = corpus.by_ts(EXPLICIT_VR_LE)
    with httpx.Client(base_url=orthanc.dicomweb_url, timeout=30.0) as client:
        response = client.get(s.instance_path(), headers={"Accept": ANY_TS})
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) < len(response.content)  # compressed length
    assert _parts(response)[0][1] == s.data


def test_unquoted_type_parameter_is_accepted(corpus: Corpus, http: httpx.Client) -> None:
    s = corpus.by_ts(*JPEG2000)
    response = http.get(s.instance_path(), headers={"Accept": ANY_TS_UNQUOTED})
    assert response.status_code == 200
    assert CONTENT_TYPE_RE.match(response.headers["content-type"])  # answer quotes type= anyway
    assert _parts(response)[0][1] == s.data
    study = http.get(f"/studies/{s.study}", headers={"Accept": ANY_TS_UNQUOTED})
    assert study.status_code == 200
    assert s.data in [b for _, b in _parts(study)]


@pytest.mark.parametrize("accept", [NO_TS, "*/*", None])
def test_without_transfer_syntax_any_orthanc_transcodes(
    corpus: Corpus, http: httpx.Client, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    j2k = corpus.by_ts(*JPEG2000)
    failed = http.get(j2k.instance_path(), headers=headers)
    assert failed.status_code == 500  # "Cannot transcode image": Debian's DCMTK has no J2K codec
    assert failed.json()["Message"] == "Error encountered within the plugin engine"
    assert http.get(f"/studies/{j2k.study}", headers=headers).status_code == 500

    jpeg = corpus.by_ts(JPEG_BASELINE)
    response = http.get(jpeg.instance_path(), headers=headers)
    assert response.status_code == 200
    assert CONTENT_TYPE_RE.match(response.headers["content-type"])
    ((_, body),) = _parts(response)
    assert body != jpeg.data and len(body) > len(jpeg.data)  # decompressed
    assert _transfer_syntax(body) == EXPLICIT_VR_LE

    plain = corpus.by_ts(EXPLICIT_VR_LE)
    response = http.get(plain.instance_path(), headers=headers)
    assert _parts(response)[0][1] == plain.data  # already Explicit VR LE: untouched


def test_duplicate_uids_under_another_patient_are_404(
    orthanc: OrthancServer, http: httpx.Client, tmp_path: Path
) -> None:
    """Same Study/Series/SOP UIDs, other PatientID: Orthanc stores a 2nd patient/study/series/
    instance, and WADO-RS then answers 404 for those UIDs at every level (QIDO lists both).
    Orthanc hashes PatientID verbatim, so even trailing padding splits a patient: pydicom's
    badVR.dcm ("id11111") and rtdose_rle.dcm ("id11111 ") end up as two Orthanc studies."""
    orthanc.reset()
    original = PYDICOM_TEST_FILES / "CT_small.dcm"
    ds = pydicom.dcmread(original)
    ds.PatientID = "dlstudy-other-patient"
    twin = tmp_path / "twin.dcm"
    ds.save_as(twin)
    first, second = orthanc.upload(original), orthanc.upload(twin)
    assert first["ID"] != second["ID"] and second["Status"] == "Success"
    series_url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    url = f"{series_url}/instances/{ds.SOPInstanceUID}"
    response = http.get(url, headers={"Accept": ANY_TS})
    assert response.status_code == 404
    assert "inexistent instance" in response.json()["Details"]
    with pytest.raises(LookupError):
        orthanc.find_instance(str(ds.SOPInstanceUID))
    # The study and series are unreachable too, while QIDO lists the study twice.
    for level_url in (f"/studies/{ds.StudyInstanceUID}", series_url):
        assert http.get(level_url, headers={"Accept": ANY_TS}).status_code == 404
    listed = _study_uids(http.get("/studies").json())
    assert listed == [str(ds.StudyInstanceUID)] * 2
    orthanc.reset()


def test_missing_study_is_404(corpus: Corpus, http: httpx.Client) -> None:
    response = http.get("/studies/1.2.3.4.999", headers={"Accept": ANY_TS})
    assert response.status_code == 404
    assert "inexistent study" in response.json()["Details"]
