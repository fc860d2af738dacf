"""minimq for test suites: `Broker` starts a real minimq-server on free loopback ports.

The server runs as `minimq-server --ephemeral --exit-with-stdin`: it prints one JSON line
(its URLs, pid and data directory) once it accepts connections, and exits when this
process closes its stdin, exits or dies. The data directory belongs to the `Broker`
object (so `restart()` keeps durable queues and persistent messages) and is deleted by
`close()` / the end of the `with` block.

    with minimq.Broker() as broker:
        connect(broker.url)
"""

import json
import os
import select
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

__all__ = ["Broker", "BrokerError", "find_server"]

SERVER_NAME = "minimq-server"


class BrokerError(RuntimeError):
    """The server could not be found, did not start, or did not stop."""


def find_server():
    """The minimq-server executable: `$MINIMQ_SERVER`, else the one installed with this
    package (the scripts directory of this Python environment), else one on `PATH`."""
    explicit = os.environ.get("MINIMQ_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise BrokerError(f"MINIMQ_SERVER={explicit!r} is not an executable file")
        return explicit
    # The wheel installs the binary as a script: next to this interpreter's other
    # scripts, or the user scheme's for `pip install --user`.
    schemes = [None, f"{os.name}_user"]
    for scheme in schemes:
        try:
            scripts = (
                sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
            )
        except KeyError:
            continue
        candidate = os.path.join(scripts, SERVER_NAME)
        if os.access(candidate, os.X_OK):
            return candidate
    # A venv's python run without activating the venv: its bin is beside sys.executable.
    candidate = os.path.join(os.path.dirname(sys.executable), SERVER_NAME)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(SERVER_NAME)
    if found:
        return found
    raise BrokerError(
        f"{SERVER_NAME} not found: install the minimq wheel, put it on PATH, or set MINIMQ_SERVER"
    )


class Broker:
    """A minimq-server process for tests.

    `url` (AMQP, guest/guest, vhost /), `http_url` (management API, or None with
    `http=False`), `pid` and `data_dir` are set while it runs. `restart()` reuses the
    data directory and, when they are still free, the same ports, so a client that keeps
    the URL can reconnect.
    """

    def __init__(
        self,
        *,
        http=True,
        server=None,
        log_level="warn",
        extra_args=(),
        start_timeout=30.0,
        stop_timeout=30.0,
    ):
        self.http = http
        self.server = server
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.url = None
        self.http_url = None
        self.pid = None
        self.data_dir = None
        self.log_path = None
        self.returncode = None
        self._root = None
        self._proc = None

    # ------------------------------------------------------------------ lifecycle

    def start(self):
        """Starts the server (a no-op if it runs) and returns self."""
        if self._proc is not None:
            return self
        if self.server is None:
            self.server = find_server()
        if self._root is None:
            # Ours, not the server's own temporary directory: it must outlive a stop
            # (restart keeps the data), so this object deletes it in close().
            self._root = tempfile.mkdtemp(prefix="minimq-test-")
            self.data_dir = os.path.join(self._root, "data")
            os.mkdir(self.data_dir)
            self.log_path = os.path.join(self._root, "server.log")
        # Restart: ask for the previous ports first; if one was taken meanwhile, any.
        previous = _ports(self.url, self.http_url)
        if previous is not None:
            try:
                return self._spawn(previous)
            except BrokerError:
                pass
        return self._spawn(None)

    def stop(self):
        """Stops the server gracefully (stdin closed, then SIGTERM, then SIGKILL after
        `stop_timeout`); the data directory is kept for `restart()`."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget(proc)

    def kill(self):
        """SIGKILL, as in a crash: nothing is flushed or closed. `restart()` recovers
        what was on disk."""
        proc = self._proc
        if proc is None:
            return
        proc.kill()
        proc.wait()
        try:
            proc.stdin.close()
        except OSError:
            pass
        self._forget(proc)

    def restart(self):
        """Stops the server if it runs and starts it again on the same data."""
        self.stop()
        return self.start()

    def close(self):
        """Ends the server and deletes its data directory.

        The server is killed, not stopped: its data is about to be deleted, so a clean
        log close is worth nothing, and a graceful stop waits up to 3 s for each client
        that does not answer connection.close (an idle pika BlockingConnection, a Celery
        app's pool), which a suite of many fresh brokers would pay per test. Call
        `stop()` first for a graceful shutdown."""
        try:
            self.kill()
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # A Broker dropped without close(): the server exits anyway (its stdin closes
        # with this process); the directory is removed here when possible.
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = f"pid={self.pid} url={self.url!r}" if self._proc else "stopped"
        return f"<minimq.Broker {state}>"

    # ------------------------------------------------------------------ internals

    def _forget(self, proc):
        self.returncode = proc.returncode
        self._proc = None
        self.pid = None

    def _spawn(self, ports):
        args = [
            self.server,
            "--ephemeral",
            "--exit-with-stdin",
            "--data-dir",
            self.data_dir,
            "--log",
            self.log_level,
        ]
        if ports is not None:
            args += ["--listen", f"127.0.0.1:{ports[0]}"]
        if not self.http:
            args += ["--http", "off"]
        elif ports is not None and ports[1] is not None:
            args += ["--http", f"127.0.0.1:{ports[1]}"]
        args += self.extra_args
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMQ_")}
        # Logs go to a file: a pipe nobody reads would fill and stall the server.
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        try:
            line = _read_line(proc, self.start_timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()
            raise
        if line is None:
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()
            raise BrokerError(
                f"{self.server} exited with {proc.returncode} before it listened; "
                f"log:\n{self._log_tail()}"
            )
        # Nothing more comes on stdout; closing our end is harmless for the server.
        proc.stdout.close()
        info = json.loads(line)
        self._proc = proc
        self.url = info["amqp_url"]
        self.http_url = info["http_url"]
        self.pid = info["pid"]
        self.returncode = None
        return self

    def _log_tail(self, lines=40):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


def _read_line(proc, timeout):
    """The first line of the server's stdout, or None if it exits first; raises
    BrokerError after `timeout` seconds."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError(f"no JSON line from minimq-server after {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def _ports(url, http_url):
    """(AMQP port, management port or None) of the previous run, or None before any."""
    if not url:
        return None
    amqp = int(url.rsplit("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    http = int(http_url.rsplit(":", 1)[1]) if http_url else None
    return amqp, http
