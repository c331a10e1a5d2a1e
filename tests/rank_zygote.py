"""A fork server for tests that start many short ``nuwa-ds train`` ranks (``tests/test_stop_stress.py``).

A fresh rank spends most of a short CPU run importing torch, DeepSpeed and the ``torch._dynamo`` /
``torch._inductor`` modules that DeepSpeed's ZeRO optimizers pull in (~3 s of one core), and its
interpreter's teardown afterwards. This server imports them once, then forks one child per request;
the child runs ``nuwa_ds.cli.main`` exactly as the console script does (the stop signals are blocked
there, before any thread of the rank starts), in the process group, environment, working directory and
log file the request names, runs the atexit handlers and exits with the command's status. The rank's
own code path, from ``cli.main`` on, is the one a user's process runs; what it skips is the imports
and the interpreter's teardown, which the stress test covers with fresh launches (its start-up trials).

Protocol (one JSON object per line): the test writes ``{"argv", "env", "cwd", "log", "pgid"}`` on the
server's stdin (``pgid`` 0: a new group led by the child); the server answers ``{"pid": N}`` on its
stdout, and when the child ends writes its exit status (``os.waitstatus_to_exitcode``: negative for a
signal) to ``<log>.status``. The server is one thread: it forks only from that thread and reaps its
children between requests.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path

STATUS_SUFFIX = ".status"


def _child(request: dict) -> None:
    code = 70
    try:
        os.setpgid(0, request["pgid"])
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = ["nuwa-ds", *request["argv"]]
        from nuwa_ds import cli

        code = cli.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the traceback goes to the rank's log, the status says 1
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(children: dict[int, str]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        log = children.pop(pid, None)
        if log is not None:
            tmp = Path(log + STATUS_SUFFIX + ".tmp")
            tmp.write_text(str(os.waitstatus_to_exitcode(status)))
            tmp.replace(log + STATUS_SUFFIX)


def serve() -> None:
    sys.path[0] = os.getcwd()  # as ``python -m nuwa_ds.cli`` run from there (not this file's folder)
    import deepspeed  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam  # noqa: F401 (ZeRO imports it)

    import nuwa_ds.cli  # noqa: F401
    import nuwa_ds.train  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    children: dict[int, str] = {}
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.01)
        _reap(children)
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(request)
            try:  # also from this side, so that the group exists when the test signals it
                os.setpgid(pid, request["pgid"] or pid)
            except OSError:
                pass
            children[pid] = request["log"]
            os.write(1, (json.dumps({"pid": pid}) + "\n").encode())
    while children:
        _reap(children)
        time.sleep(0.01)


class ForkedRank:
    """A rank forked by the server, with the parts of ``subprocess.Popen`` the tests use."""

    def __init__(self, pid: int, log: Path):
        self.pid, self.status_path, self.returncode = pid, Path(str(log) + STATUS_SUFFIX), None

    def poll(self):
        if self.returncode is None and self.status_path.exists():
            self.returncode = int(self.status_path.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"rank {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


class Zygote:
    """The server as the test sees it: ``start(argv, env, log, pgid)`` -> a ForkedRank."""

    def __init__(self, cwd: Path, env: dict):
        self.cwd = cwd
        self.proc = subprocess.Popen([sys.executable, __file__], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"the rank fork server did not start (exit {self.proc.wait()})")

    def start(self, argv: list[str], env: dict, log: Path, pgid: int = 0) -> ForkedRank:
        Path(str(log) + STATUS_SUFFIX).unlink(missing_ok=True)
        request = dict(argv=argv, env=env, cwd=str(self.cwd), log=str(log), pgid=pgid)
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return ForkedRank(json.loads(self.proc.stdout.readline())["pid"], log)

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    serve()
