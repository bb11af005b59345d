"""The synthetic study generator: valid, realistic, deterministic, sized as asked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest
import typer
from typer.testing import CliRunner

from dlstudy.cli.server_cmds import register
from dlstudy.server.synth import PRESETS, SynthSpec, generate
from tests.cli_helpers import run_installed
from tests.fixtures.embedded_server import SynthStudy

TINY = SynthSpec(studies=2, series=2, instances=3, size=20_000)


def test_small_study_reads_fully_with_realistic_attributes(synth_study: SynthStudy) -> None:
    assert len(synth_study.instances) == 3 * 20
    assert len(synth_study.series_uids) == 3
    for instance in synth_study.instances[::7]:
        ds = pydicom.dcmread(instance.path)  # full read, pixel data included
        assert ds.preamble == b"\0" * 128
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == instance.sop_uid
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (
            instance.study_uid,
            instance.series_uid,
        )
        assert ds.Modality == "CT" and ds.SOPClassUID.name == "CT Image Storage"
        assert "^" in str(ds.PatientName) and ds.PatientID and ds.AccessionNumber
        assert len(ds.StudyDate) == 8 and ds.SeriesNumber >= 1 and ds.InstanceNumber >= 1
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2
        assert instance.path == synth_study.root / ds.StudyInstanceUID / (
            f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        )
        assert instance.size == instance.path.stat().st_size


def test_sizes_near_target(synth_study: SynthStudy) -> None:
    for instance in synth_study.instances:
        assert abs(instance.size - 64 * 1024) < 0.02 * 64 * 1024


def test_instances_differ_and_numbers_follow_order(synth_study: SynthStudy) -> None:
    first_series = [i for i in synth_study.instances if i.series_uid == synth_study.series_uids[0]]
    numbers = [
        pydicom.dcmread(i.path, stop_before_pixels=True).InstanceNumber for i in first_series
    ]
    assert numbers == list(range(1, 21))
    pixels = {pydicom.dcmread(i.path).PixelData[:4096] for i in first_series[:5]}
    assert len(pixels) == 5


def test_uids_and_bytes_deterministic_per_seed(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", TINY)
    b = generate(tmp_path / "b", TINY)
    c = generate(tmp_path / "c", dataclasses.replace(TINY, seed=1))
    assert [(i.study_uid, i.series_uid, i.sop_uid) for i in a] == [
        (i.study_uid, i.series_uid, i.sop_uid) for i in b
    ]
    assert all(x.path.read_bytes() == y.path.read_bytes() for x, y in zip(a, b, strict=True))
    assert not {i.sop_uid for i in a} & {i.sop_uid for i in c}
    assert not {i.study_uid for i in a} & {i.study_uid for i in c}
    assert len({i.study_uid for i in a}) == 2
    assert len({i.sop_uid for i in a}) == len(a) == 2 * 2 * 3
    assert all(pydicom.uid.UID(i.sop_uid).is_valid for i in a)


def test_studies_get_distinct_patients_and_dates(tmp_path: Path) -> None:
    written = generate(tmp_path, TINY)
    heads = [pydicom.dcmread(i.path, stop_before_pixels=True) for i in (written[0], written[-1])]
    assert heads[0].PatientID != heads[1].PatientID
    assert heads[0].StudyDate < heads[1].StudyDate


def test_multiframe(tmp_path: Path) -> None:
    spec = SynthSpec(series=1, instances=1, size=300_000, frames=12, modality="MR")
    (instance,) = generate(tmp_path, spec)
    ds = pydicom.dcmread(instance.path)
    assert ds.NumberOfFrames == 12
    assert ds.SOPClassUID.name == "Enhanced MR Image Storage"
    assert len(ds.PixelData) == 12 * ds.Rows * ds.Columns * 2
    assert abs(instance.size - 300_000) < 3_000


def test_slide_microscopy_is_rgb_tiled(tmp_path: Path) -> None:
    spec = dataclasses.replace(PRESETS["wsi"], size=16 * 256 * 256 * 3 + 2048, frames=16)
    (instance,) = generate(tmp_path, spec)
    ds = pydicom.dcmread(instance.path, stop_before_pixels=True)
    assert (ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation) == ("SM", 3, "RGB")
    assert (ds.Rows, ds.Columns, ds.NumberOfFrames) == (256, 256, 16)
    assert ds.TotalPixelMatrixColumns == 4 * 256
    assert len(pydicom.dcmread(instance.path).PixelData) == 16 * 256 * 256 * 3


def test_presets_are_the_documented_shapes() -> None:
    shape = {name: (s.series, s.instances, s.size, s.frames) for name, s in PRESETS.items()}
    assert shape["small"] == (3, 20, 64 * 1024, 1)
    assert shape["ct"] == (4, 250, 512 * 1024, 1)
    assert shape["many"][:2] == (1, 2000)
    assert PRESETS["wsi"].modality == "SM" and PRESETS["wsi"].size >= 1.5 * 2**30


@pytest.mark.parametrize(
    "bad", [{"instances": 0}, {"size": 2**32}, {"modality": "C T"}, {"frames": 0}]
)
def test_bad_specs_rejected(tmp_path: Path, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, dataclasses.replace(TINY, **bad))  # type: ignore[arg-type]


def test_synth_command_overrides_preset(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    args = ["synth", str(tmp_path), "--preset", "mr", "--series", "1", "--instances", "2"]
    result = CliRunner().invoke(app, [*args, "--seed", "7"])
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.Modality == "MR"
    assert "wrote 2 files" in result.output and ds.StudyInstanceUID in result.output
    bad = CliRunner().invoke(app, ["synth", str(tmp_path), "--instances", "0"])
    assert bad.exit_code == 2


def test_another_preset_into_the_same_folder_is_another_study(tmp_path: Path) -> None:
    first = run_installed("synth", str(tmp_path), "--preset", "small")
    second = run_installed("synth", str(tmp_path), "--preset", "mr")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.endswith("1 study: " + first.stdout.split()[-1] + "\n")
    small, mr = first.stdout.split()[-1], second.stdout.split()[-1]
    assert small != mr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([small, mr])
    assert len(list((tmp_path / small).rglob("*.dcm"))) == 60  # untouched by the second


def test_study_dates_spread_over_the_range_asked_for(tmp_path: Path) -> None:
    result = run_installed(
        "synth", str(tmp_path), "--studies", "5", "--series", "1", "--instances", "1",
        "--study-date", "2026-03-01/2026-03-09",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    dates = sorted(
        pydicom.dcmread(path, stop_before_pixels=True).StudyDate for path in tmp_path.rglob("*.dcm")
    )
    assert dates == ["20260301", "20260303", "20260305", "20260307", "20260309"]
    relative = run_installed("synth", str(tmp_path / "week"), "--study-date", "7d")
    assert relative.returncode == 0, relative.stderr
    open_range = run_installed("synth", str(tmp_path / "x"), "--study-date", "20260101-")
    assert open_range.returncode == 2
    assert "synth needs both ends of a range" in open_range.stderr
    # A range out of order was refused with query's words, "(either end may be open)".
    backwards = run_installed("synth", str(tmp_path / "x"), "--study-date", "20260102-20260101")
    assert backwards.returncode == 2
    assert "a range of two such dates in order (both ends given)" in backwards.stderr
    assert "open" not in backwards.stderr
