"""`dlstudy demo`: synth + serve + download + verify, all on 127.0.0.1, in one command.

This is the only place where the embedded server and the download library meet: they never
import each other, so the server cannot hide a client bug by sharing its code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DlstudyError, ExitStatus
from ..jobs.download import download
from ..report.summary import Summary
from ..settings import MAX_CONCURRENCY, Settings
from .command import Command
from .common import choose_progress, error_line, exit_on_interrupt, fail_usage, finish

PRESETS = ("small", "ct", "mr", "many")


def verify_against_source(sources: list[tuple[Path, str, str, str]], output: Path) -> list[str]:
    """Byte-compare every downloaded file with the file the server read; return mismatches."""
    problems = []
    for source, study, series, sop in sources:
        target = output / study / series / f"{sop}.dcm"
        if not target.is_file():
            problems.append(f"missing {target}")
        elif target.read_bytes() != source.read_bytes():
            problems.append(f"differs from the source: {target}")
    return problems


def register(app: typer.Typer) -> None:
    @app.command("demo", cls=Command)
    def demo_command(
        preset: Annotated[
            str,
            typer.Option("--preset", help=f"Synthetic study to generate: {', '.join(PRESETS)}."),
        ] = "small",
        http: Annotated[str, typer.Option("--http", help="HTTP version: auto, 1.1 or 2.")] = "auto",
        concurrency: Annotated[
            int,
            typer.Option(
                "--concurrency",
                "-c",
                help="Instances in flight at once, as for download; 0: chosen by protocol.",
                min=0,
                max=MAX_CONCURRENCY,
            ),
        ] = 0,
        keep: Annotated[
            Path | None, typer.Option("--keep", help="Keep the downloaded study in this folder.")
        ] = None,
        json_output: Annotated[
            bool, typer.Option("--json", help="Print the JSON summary.")
        ] = False,
    ) -> None:
        """Generate a study, serve it on 127.0.0.1, download it, verify every byte, clean up."""
        from ..server import ServerOptions, running_server
        from ..server.synth import PRESETS as SYNTH_PRESETS
        from ..server.synth import generate

        if preset not in PRESETS:
            fail_usage(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        if http not in ("auto", "1.1", "2"):  # the demo serves plain http://: no HTTP/3
            fail_usage(f"demo: --http must be auto, 1.1 or 2 (it serves http://), got {http!r}")
        if keep is not None:  # before generating and serving anything
            _check_keep(keep)
        # SIGTERM as Ctrl-C: the temporary folder is removed on the way out (a SIGTERM while
        # the study was generated killed the process and left it, hundreds of MB, in /tmp).
        left = f"what was downloaded is in {keep}" if keep else "its temporary files are removed"
        # What --json prints for a demo stopped before its download gave a summary (while it
        # generates the study, say): the folder, and the server's URL once it serves.
        so_far = Summary(url="", output=str(keep or ""))
        with exit_on_interrupt(json_output=json_output, kept=left, before_run=lambda: so_far):
            with tempfile.TemporaryDirectory(prefix="dlstudy-demo-") as scratch:
                source_dir = Path(scratch) / "source"
                output = keep or Path(scratch) / "downloaded"
                so_far.output = str(output)
                typer.echo(f"dlstudy demo: generating the '{preset}' synthetic study ...", err=True)
                instances = generate(source_dir, SYNTH_PRESETS[preset])
                study_uids = list(dict.fromkeys(i.study_uid for i in instances))
                with running_server(ServerOptions(root=source_dir)) as base_url:
                    typer.echo(f"dlstudy demo: serving it at {base_url}", err=True)
                    so_far.url = base_url
                    settings = Settings(
                        url=base_url,
                        output=output,
                        concurrency=concurrency,
                        http=http,  # type: ignore[arg-type]
                    )
                    progress = choose_progress(quiet=False, json_output=json_output)
                    summary: Summary | None = None
                    try:
                        summary = download(study_uids, settings=settings, progress=progress)
                    except DlstudyError as exc:
                        finish(
                            getattr(exc, "summary", None), exc, json_output=json_output, quiet=False
                        )
                assert summary is not None
                so_far = summary  # stopped while it verifies: what was downloaded
                sources = [(i.path, i.study_uid, i.series_uid, i.sop_uid) for i in instances]
                problems = verify_against_source(sources, output)
                present = summary.downloaded + summary.skipped
                if present != len(instances):
                    problems.append(f"expected {len(instances)} instances, got {present}")
                for problem in problems[:20]:
                    error_line(problem)
                if problems:
                    summary.exit_status = ExitStatus.SOME_FAILED
                    summary.error = f"{len(problems)} problems in the byte-for-byte check"
                else:
                    typer.echo(
                        f"dlstudy demo: all {len(instances)} files byte-identical to the source",
                        err=True,
                    )
                finish(summary, None, json_output=json_output, quiet=False)


def _check_keep(keep: Path) -> None:
    """--keep must be a folder dlstudy can write in (made if missing)."""
    try:
        keep.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        fail_usage(f"--keep {str(keep)!r} exists and is not a folder")
    except OSError as exc:
        fail_usage(f"--keep {str(keep)!r}: cannot make it: {exc.strerror or exc}")
    if not os.access(keep, os.W_OK | os.X_OK):
        fail_usage(f"--keep {str(keep)!r}: cannot write in it")
