"""The training process's allocator setting keeps freed large blocks in the process."""

import subprocess
import sys

import pytest

from rssm.host import keep_freed_memory

# Allocates four 16 MB tensors and frees them, 20 times, and prints the page faults that took; with `keep` first.
CHURN = """
import resource, sys, torch
from rssm.host import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def churn():
    blocks = [torch.ones(4 << 20) for _ in range(4)]
    return sum(b.sum() for b in blocks)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not keep_freed_memory(), reason="glibc's mallopt only")
def test_freed_blocks_stay_in_the_process():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    default, kept = faults("default"), faults("keep")
    assert default > 20 * 4 * 2000  # fresh blocks fault in their 4,096 pages each again
    assert kept < default / 20
