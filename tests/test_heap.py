"""dlstudy/heap.py: large buffers freed and allocated again reuse the process's memory."""

from __future__ import annotations

import subprocess
import sys

# Allocates and frees 8 MiB in 1 MiB buffers 50 times (what a download does with frame bodies
# and read buffers) and prints the page faults that took.
CHURN = """
import resource, sys
if sys.argv[1] == "tuned":
    from dlstudy.heap import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def churn():
    blocks = [bytearray(1024 * 1024) for _ in range(8)]
    del blocks
churn()
before = faults()
for _ in range(50):
    churn()
print(faults() - before)
"""


def faults_after_churn(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_freed_buffers_are_reused_without_page_faults() -> None:
    default = faults_after_churn("default")
    assert default > 50 * 256  # glibc's defaults hand 8 MiB back and fault it in every time
    assert faults_after_churn("tuned") < 100
