"""The host allocator setting the training loop makes on a CPU: freed memory is reused, not faulted in anew."""

import resource
import sys

import pytest
import torch

from fourm.train.host_memory import retain_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_tensor_is_reused_without_page_faults():
    assert retain_freed_memory()
    assert retain_freed_memory()  # once per process; calling again is harmless

    def faults_of_a_64mib_tensor() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 << 20)  # 64 MiB, over glibc's largest mmap threshold: mapped anew each time by default
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(3):  # the heap grows (glibc settles in two rounds here)
        faults_of_a_64mib_tensor()
    assert faults_of_a_64mib_tensor() < 0.1 * (64 << 20) / 4096  # then its pages stay (16384 faults each time if not)
