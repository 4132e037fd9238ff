"""Peak resident memory of this process, for the benchmarks' worker processes.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not it for a process started by another: Linux keeps the
high-water mark across ``execve``, and a child created by ``fork`` starts from its parent's RSS, so a
small worker spawned by a 1.5 GB orchestrator reports 1.5 GB. ``VmHWM`` in ``/proc/self/status`` is
the peak RSS of the current address space, which ``execve`` replaces: the worker's own peak.
"""
import resource


def peak_rss_mib() -> float:
    """Peak resident set size of this process's address space since its last exec, MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: best available
