"""`import dlstudy` as a script, notebook or service uses it, against the embedded server."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import dlstudy
from dlstudy.model import InstanceRef
from dlstudy.report.progress import Listed

from ..cli_helpers import assert_same_files
from ..fixtures.embedded_server import StartServer, SynthStudy

pytestmark = pytest.mark.integration


class HeldAtStart:
    """A progress sink that keeps its run waiting, output folder locked, once it starts."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def resolving(self, study_uid: str) -> None:
        pass

    def start(self, total: int, skipped: int, listed: Listed | None = None) -> None:
        self.started.set()
        self.release.wait(60)

    def advance(self, nbytes: int) -> None:
        pass

    def instance_done(self, ref: InstanceRef, nbytes: int) -> None:
        pass

    def instance_failed(self, ref: InstanceRef, reason: str) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_second_run_into_a_folder_in_use_in_this_process_is_refused(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """One run per output folder holds within one process too: a service's second thread
    downloading into the folder a first one is filling gets LockedError, as another process
    would, not a second run writing the same files and manifest."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    held = HeldAtStart()
    results: list[object] = []

    def first() -> None:
        results.append(dlstudy.download([synth_study.study_uid], url, output=out, progress=held))

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert held.started.wait(60)
        with pytest.raises(dlstudy.DlstudyError) as refused:
            dlstudy.download([synth_study.study_uid], url, output=out)
    finally:
        held.release.set()
        thread.join(60)
    assert refused.value.exit_status == dlstudy.ExitStatus.LOCKED
    assert "in use by another dlstudy run" in str(refused.value)
    [summary] = results
    assert isinstance(summary, dlstudy.Summary) and summary.downloaded == 60
    assert_same_files(synth_study.instances, out)
