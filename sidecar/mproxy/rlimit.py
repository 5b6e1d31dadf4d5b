"""Raise the open-file limit to its hard maximum at start (both roles).

Every client, backend and tunnel socket is an fd; a soft limit of 1024 (a common default) is reached by a
few hundred slow clients, and then accept() fails for everyone, /healthz included. The hard limit is what
the operator (or the container runtime) granted; going up to it needs no privilege.
"""

from __future__ import annotations

__all__ = ["raise_nofile"]


def raise_nofile() -> int | None:
    """Set RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now in force (None where
    the platform has no such limit)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target
