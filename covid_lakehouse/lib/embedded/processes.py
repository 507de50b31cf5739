"""Process and port helpers of the embedded stack: free loopback ports, and whether a recorded PID is
still one of OUR servers.

A PID in ``stack.json`` or ``postmaster.pid`` is only a hint: after the servers stopped it is 0 (and
``os.kill(0, ...)`` signals the caller's whole process group), and after a reboot the number may belong
to any process. So nothing is signalled unless :func:`is_our_server` recognises it by its program and
its data folder on the command line.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import psutil

STARTUP_TIMEOUT_S = 30.0


class ServiceStartError(RuntimeError):
    """An embedded service did not come up; the message carries the tail of its log."""


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, grpc_offset: bool = False, avoid: set[int] | None = None) -> int:
    """A free loopback port; with grpc_offset also port+10000 free (SeaweedFS opens both)."""
    avoid = avoid or set()
    for _ in range(200):
        port = secrets.randbelow(20000) + 20000 if grpc_offset else _ephemeral_port()
        if port in avoid or (grpc_offset and port + 10000 in avoid):
            continue
        if port_free(port) and (not grpc_offset or port_free(port + 10000)):
            return port
    raise ServiceStartError("no free loopback port found")


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_our_server(pid: object, *, program: str, folder: Path) -> bool:
    """True when ``pid`` is a live process running ``program`` on the data ``folder``.

    0, negative and non-integer PIDs are never ours: signalling them reaches process groups.
    """
    return _our_server(pid, program, folder) is not None


def _our_server(pid: object, program: str, folder: Path) -> psutil.Process | None:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if not cmdline or Path(cmdline[0]).name != program:
        return None
    where = str(folder)
    # postgres takes `-D <folder>`, weed mini `-dir=<folder>`
    return proc if any(arg == where or arg.endswith("=" + where) for arg in cmdline[1:]) else None


def terminate_server(pid: object, *, program: str, folder: Path, timeout: float = 10.0) -> None:
    """SIGTERM our server ``pid`` and wait for it to exit (SIGKILL after ``timeout``); anything else is left alone."""
    proc = _our_server(pid, program, folder)
    if proc is None:
        return
    try:
        proc.terminate()  # psutil checks the process is still the one it looked at (PID reuse)
        proc.wait(timeout)  # reaps it when it is our child, polls otherwise
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
