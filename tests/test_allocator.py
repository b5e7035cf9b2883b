"""--cpu-allocator keep: glibc malloc reuses freed memory, so repeated large allocations stop faulting."""

import json
import platform
import subprocess
import sys

import pytest

from fnoise_maskrcnn.arguments import parse

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# Allocates, fills and frees a 64 MiB tensor ten times; prints the minor page faults of the last five.
_PROBE = """
import json, resource, sys, torch
from fnoise_maskrcnn.engine.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults[-5:]}))
"""


def _probe(setting: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, setting], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(done.stdout)


def test_keep_reuses_freed_memory_where_the_system_default_faults_every_time():
    pages = 64 * 2**20 // 4096
    system, keep = _probe("system"), _probe("keep")
    assert not system["applied"] and keep["applied"]
    # the default maps fresh pages for every 64 MiB tensor: one fault per 4 KiB page (or per huge page)
    assert min(system["faults"]) > pages // 600
    # once the heap has settled, the same memory, already mapped: no faults. The median, not the maximum:
    # an unrelated event in the process (or the kernel) can make one allocation fault afresh.
    assert sorted(keep["faults"])[2] <= 8


def test_keep_is_the_training_default_and_system_can_be_chosen():
    assert parse([]).config.run.cpu_allocator == "keep"
    assert parse(["--cpu-allocator", "system"]).config.run.cpu_allocator == "system"
