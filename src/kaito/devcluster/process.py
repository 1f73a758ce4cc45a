"""Child processes that never outlive the harness: own process groups, atexit and signal cleanup."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

# Grace period between SIGTERM and SIGKILL; etcd and the apiserver stop in well under a second.
STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1

_live: dict[int, Process] = {}
_live_lock = threading.Lock()
_handlers_installed = False


def _die_with_parent() -> None:
    # Runs in the child before exec: if the harness is SIGKILLed (no atexit, no signal handler),
    # the kernel still kills the child, so a crashed test run leaves no control plane behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """One component: started in its own session, output to a log file, stopped group-wide."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        detach: bool = False,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        # A detached process (`kaito dev cluster up`) must survive the command that started it;
        # otherwise it dies with the harness and is registered for cleanup at exit.
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=None if detach else _die_with_parent,
            # A lock the child must hold for as long as it lives (the real node's).
            pass_fds=tuple(pass_fds),
        )
        self.pid = self.popen.pid
        if not detach:
            _register(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after `grace_s`."""
        try:
            if self.alive():
                signal_group(self.pid, signal.SIGTERM)
                try:
                    self.popen.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    signal_group(self.pid, signal.SIGKILL)
                    self.popen.wait(timeout=grace_s)
            # Children the component may have forked share its group; make sure none remain.
            if not wait_group_gone(self.pid, grace_s):
                signal_group(self.pid, signal.SIGKILL)
                wait_group_gone(self.pid, grace_s)
        finally:
            self._log.close()
            with _live_lock:
                _live.pop(self.pid, None)


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name may contain spaces and parentheses; fields resume after the last ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def group_alive(pgid: int) -> bool:
    # Signal 0 only checks existence, and is cheaper than scanning /proc when the group is gone.
    return signal_group(pgid, 0) and bool(group_members(pgid))


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_groups(pgids: Sequence[int], grace_s: float = STOP_GRACE_S) -> None:
    """Stop process groups we no longer hold handles to (a cluster started by another command)."""
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
        if not wait_group_gone(pgid, grace_s):
            signal_group(pgid, signal.SIGKILL)
            wait_group_gone(pgid, grace_s)


def stop_all() -> None:
    """Stop every registered process, newest first (kwok before the apiserver before etcd)."""
    with _live_lock:
        processes = sorted(_live.values(), key=lambda p: p.pid, reverse=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.stop()


def _register(process: Process) -> None:
    with _live_lock:
        _live[process.pid] = process
    _install_handlers()


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(stop_all)
    # SIGINT already unwinds through fixtures as KeyboardInterrupt; SIGTERM and SIGHUP would
    # kill Python without running atexit, so turn them into a cleanup followed by the default.
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        signal.signal(sig, _make_handler(sig, previous))


def _make_handler(
    sig: signal.Signals, previous: Callable[[int, FrameType | None], object] | int | None
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop_all()
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)

    return handler
