"""``cpumap run`` against hostile inputs and environments, as an operator meets them.

Every case starts the command as a subprocess (``python -m cpumap.cli``) with real
FIFOs, pipes, signals, full devices and resource limits, and asserts the same things:

* a one-line message on stderr, never a traceback;
* the documented exit status (docs/cli.md, "How each way out of a run behaves");
* a summary whenever the run got as far as reading (and it balances);
* the process ends within :data:`BOUND` -- a hang check, not a timing: a run that ignores
  its stop waits there until it is killed, and the test says so;
* nothing left behind: the autouse ``no_leaks`` fixture (conftest) fails the test on a
  process or a memfd segment that outlives it.

Signals go only to a run that has said it is running (its first line): before that the
interpreter is still importing, and Python's own handlers are in place.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import io
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cpumap.capture import open_capture
from cpumap.cpus import usable_cpus
from cpumap.demo import demo_capture_path
from cpumap.live.netns import VethPair
from tests.helpers import veth_unavailable, wait_for

pytestmark = pytest.mark.slow

CPUMAP = [sys.executable, "-m", "cpumap.cli"]
LAST_CPU = str(max(usable_cpus()))
BOUND = float(os.environ.get("CPUMAP_TEST_BOUND", "60"))  # seconds before a run counts as hung
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
DEMO = demo_capture_path().read_bytes()
PREFIX = 100_000  # bytes of the demo capture a stalled writer gives
SLOW_HANDLER = "import time\ndef handle(skb):\n    time.sleep(0.001)\n"


@dataclass
class Ended:
    rc: int
    out: str
    err: str

    @property
    def summary(self) -> dict:
        """The last JSON line on stdout: the summary."""
        lines = [ln for ln in self.out.splitlines() if ln.startswith("{")]
        assert lines, f"no JSON on stdout; stderr: {self.err}"
        rec = json.loads(lines[-1])
        assert rec["type"] == "summary", rec
        return rec


def start(
    argv: Sequence[str],
    *,
    cwd: Path,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    prefix: Sequence[str] = (),
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, *CPUMAP, *argv],
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )


def finish(proc: subprocess.Popen[str], bound: float = BOUND) -> Ended:
    """Its end within ``bound``, or a failed test (the run is killed: nothing leaks)."""
    try:
        out, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"cpumap did not end within {bound:g} s: it hangs")
    assert "Traceback" not in err, err
    return Ended(proc.returncode, out or "", err)


def run(argv: Sequence[str], *, cwd: Path, **kw: object) -> Ended:
    return finish(start(argv, cwd=cwd, **kw))  # type: ignore[arg-type]


def one_error_line(err: str, *words: str) -> str:
    """stderr is exactly one ``cpumap: error:`` line, holding ``words``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cpumap: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def wait_first_line(proc: subprocess.Popen[str]) -> str:
    """The run's first line on stdout (it is up: its signal handlers are in place)."""
    return wait_line(proc.stdout)


def wait_line(stream: Any) -> str:
    """The next line of ``stream`` (within :data:`BOUND`)."""
    ready, _, _ = select.select([stream], [], [], BOUND)
    assert ready, "the run wrote nothing"
    return stream.readline()


def whole_packets(data: bytes) -> int:
    """The packets whole in ``data`` (a cut capture), as a reader that skips damage sees."""
    with open_capture(io.BytesIO(data), skip_bad=True) as r:
        return len(r.read_all())


def balanced(summary: dict) -> None:
    assert summary["accounted"] and summary["in_flight"] == 0, summary
    assert summary["rx"] == sum(summary["outcomes"].values())


# -- sources that give nothing, or stop giving ---------------------------------------------------


class Writer:
    """The writing end of a FIFO, held by the test: opened once the run has opened its
    end (a FIFO open for writing fails with ENXIO before that), fed, then held silent."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.fd: int | None = None

    def open(self) -> None:
        self.fd = wait_for(self._try_open, BOUND, "the run opened the FIFO for reading")
        fcntl.fcntl(self.fd, fcntl.F_SETFL, 0)  # blocking writes again

    def _try_open(self) -> int | None:
        """The FIFO opened for writing, or None while no reader has it open (ENXIO)."""
        try:
            return os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            assert e.errno == errno.ENXIO, e
            return None

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    p = tmp_path / "capture.fifo"
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_fifo_with_no_writer_ends_at_a_signal(fifo, tmp_path, sig) -> None:
    proc = start(["run", "--json", str(fifo)], cwd=tmp_path)
    # No first line to wait for: the run blocks in opening the FIFO.  Wait until it has
    # it open (a writer could connect), then signal.
    probe = Writer(fifo)
    probe.open()
    proc.send_signal(sig)
    ended = finish(proc)
    probe.close()
    assert ended.rc == STATUS[sig], ended.err
    s = ended.summary
    assert s["stopped_by"] == sig.name and s["rx"] == 0 and s["exit_status"] == STATUS[sig]
    assert any("before a capture header came" in n for n in s["notes"]), s["notes"]


def test_a_fifo_with_no_writer_ends_at_the_duration(fifo, tmp_path) -> None:
    ended = run(["run", "--json", "--duration", "1", str(fifo)], cwd=tmp_path)
    assert ended.rc == 0, ended.err
    assert ended.summary["rx"] == 0 and ended.summary["stopped_by"] is None


@pytest.mark.parametrize("ending", ["duration", "SIGTERM"])
@pytest.mark.parametrize("compress", [False, True])
def test_a_stalled_writer_gives_what_it_wrote_and_the_run_ends(
    fifo, tmp_path, ending, compress
) -> None:
    """A writer that sends part of a capture and stalls: every whole packet it sent is
    read and counted, and the run still ends at --duration or at a signal."""
    data = gzip.compress(DEMO[:PREFIX]) if compress else DEMO[:PREFIX]
    extra = ["--duration", "1"] if ending == "duration" else []
    proc = start(["run", "--json", "-i", "0.05", *extra, str(fifo)], cwd=tmp_path)
    w = Writer(fifo)
    w.open()
    try:
        w.write(data[: len(data) - 7] if compress else data)  # gzip: its trailer withheld
        if ending == "SIGTERM":
            first = json.loads(wait_first_line(proc))
            assert first["type"] == "interval"
            proc.send_signal(signal.SIGTERM)
        ended = finish(proc)
    finally:
        w.close()
    assert ended.rc == (143 if ending == "SIGTERM" else 0), ended.err
    s = ended.summary
    balanced(s)
    assert s["rx"] == whole_packets(DEMO[:PREFIX]) or (compress and s["rx"] > 0), s["rx"]


def test_a_pipe_on_stdin_ends_at_a_signal(tmp_path) -> None:
    """`tcpdump -w - | cpumap run -`: a pipe whose writer goes silent."""
    r, w = os.pipe()
    try:
        proc = start(["run", "--json", "-i", "0.05", "-"], cwd=tmp_path, stdin=r)
        os.close(r)
        os.write(w, DEMO[:PREFIX])
        assert json.loads(wait_first_line(proc))["type"] == "interval"
        proc.send_signal(signal.SIGINT)
        ended = finish(proc)
    finally:
        os.close(w)
    assert ended.rc == 130, ended.err
    balanced(ended.summary)
    assert ended.summary["rx"] == whole_packets(DEMO[:PREFIX])


def test_a_live_interface_with_no_traffic_ends_at_a_signal(tmp_path) -> None:
    if (reason := veth_unavailable("a live capture on a veth")) is not None:
        pytest.skip(reason)
    with VethPair(local_netns=False) as pair:
        proc = start(["run", "--json", "-i", "0.05", "--iface", pair.local.ifname], cwd=tmp_path)
        assert json.loads(wait_first_line(proc))["rx"] == 0  # up, and nothing comes
        proc.send_signal(signal.SIGTERM)
        ended = finish(proc)
    assert ended.rc == 143, ended.err
    balanced(ended.summary)
    assert ended.summary["stopped_by"] == "SIGTERM"


# -- signals at random moments, once and twice ---------------------------------------------------


@pytest.fixture(scope="module")
def slow_handler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("handler")
    (d / "slow_handler.py").write_text(SLOW_HANDLER)
    return d


signals = st.sampled_from([signal.SIGINT, signal.SIGTERM])


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=signals, second=st.none() | signals, delay=st.floats(0, 0.5), gap=st.floats(0, 0.3))
@example(first=signal.SIGTERM, second=signal.SIGTERM, delay=0.1, gap=0.1)  # 143, not 130
def test_signals_at_random_moments(slow_handler, first, second, delay, gap) -> None:
    """A run behind a 1 ms/frame handler (its ring stays full): the first signal drains
    and summarises; a second one, while the run drains, stops it at once -- the workers
    killed, what they held counted lost -- and the summary still balances.  The status is
    the first signal's."""
    argv = ["run", "--generate", "100000000", "--handler", "slow_handler:handle"]
    proc = start([*argv, "--json", "-i", "0.05", "--cpus", LAST_CPU], cwd=slow_handler)
    wait_first_line(proc)
    time.sleep(delay)  # a random moment of the run
    proc.send_signal(first)
    if second is not None:
        # Once the run has taken the first (two signals sent at once may merge into one,
        # or be handled in signal-number order): then at a random moment of the drain,
        # which for a full ring at 1 ms a frame takes seconds.
        notice = wait_line(proc.stderr)
        assert f"cpumap: {first.name}: reading stopped; draining" in notice, notice
        time.sleep(gap)
        proc.send_signal(second)
    ended = finish(proc)
    assert ended.rc == STATUS[first], ended.err
    s = ended.summary
    balanced(s)
    assert s["stopped_by"] == first.name and s["exit_status"] == STATUS[first]
    assert s["stopped_at_once"] == (second.name if second is not None else None)
    if second is not None:
        assert any("stopped at once by a second signal" in n for n in s["notes"]), s["notes"]
        assert s["outcomes"]["lost"] > 0  # the full ring was not drained: it was counted
    else:
        assert s["outcomes"]["lost"] == 0


# -- paths, devices and limits ---------------------------------------------------------------


LONG = "x" * 300  # one path component longer than NAME_MAX (255)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--quiet", f"{{tmp}}/{LONG}.pcapng"],
        ["run", "--quiet", "--write", f"{{tmp}}/{LONG}"],
        ["run", "--quiet", "--write", "{tmp}/out", "--merge", f"{{tmp}}/out/{LONG}.pcapng"],
    ],
    ids=["capture", "write", "merge"],
)
def test_a_path_too_long_is_one_line_and_status_2(tmp_path, argv) -> None:
    ended = run([a.format(tmp=tmp_path) for a in argv], cwd=tmp_path)
    assert ended.rc == 2
    one_error_line(ended.err, "File name too long", LONG)


DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv, to run as a user a directory is closed to",
)
@pytest.mark.parametrize("what", ["capture", "write"])
def test_a_directory_we_may_not_enter_is_one_line_and_status_2(tmp_path, what) -> None:
    """As a user without the right to enter a directory (root without the capabilities
    that bypass permissions, so that the venv stays reachable)."""
    closed = tmp_path / "closed"
    (closed / "sub").mkdir(parents=True)
    (closed / "sub" / "demo.pcapng").write_bytes(DEMO)
    os.chown(closed, 65534, 65534)  # nobody's, mode 700: closed to everyone else
    closed.chmod(0o700)
    arg = ["sub/demo.pcapng"] if what == "capture" else ["--write", "sub/out"]
    argv = ["run", "--quiet", *[str(closed / a) if "/" in a else a for a in arg]]
    ended = run(argv, cwd=tmp_path, prefix=DROP_DAC)
    assert ended.rc == 2, ended.err
    one_error_line(ended.err, "Permission denied", str(closed / "sub"))


@pytest.mark.parametrize("mode", ["--quiet", "--json"])
def test_stdout_on_a_full_device_is_one_line_and_status_4(tmp_path, mode) -> None:
    with open("/dev/full", "w") as full:
        ended = run(["run", mode], cwd=tmp_path, stdout=full.fileno())
    assert ended.rc == 4, ended.err
    one_error_line(ended.err, "stdout: No space left on device", "accounted for")


def test_a_closed_stdout_still_says_how_the_run_ended(tmp_path) -> None:
    proc = subprocess.Popen(
        [*CPUMAP, "run", "--quiet"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(),
        preexec_fn=lambda: os.close(1),
    )
    ended = finish(proc)
    assert ended.rc == 0
    assert "stdout is closed" in ended.err and "every frame accounted for" in ended.err


def _limit(which: int, value: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(which, (value, value))


def _address_space_past_imports() -> int:
    """An address-space limit the interpreter and cpumap's imports fit in, and the map's
    segments do not (measured here: the imports' peak, and some room)."""
    probe = (
        "from cpumap.cli.args import build_parser, run_config\nimport cpumap.cli.run\n"
        "run_config(build_parser().parse_args(['run', '--quiet']))\n"
        "print(open('/proc/self/status').read())"
    )
    status = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=BOUND
    ).stdout
    peak_kib = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmPeak"))
    return (peak_kib + 16 * 1024) * 1024  # the map's segments need several times that


@pytest.mark.parametrize(
    "limit",
    # Open files: 8 fails at the frame pool's segment, 11 at the CPU table's (fewer than
    # 7 and Python cannot import the command at all).
    [("open files", 8), ("open files", 11), ("address space", None)],
    ids=["nofile-8", "nofile-11", "as"],
)
def test_a_limit_the_map_cannot_start_under_is_one_line_and_status_2(tmp_path, limit) -> None:
    what, n = limit
    if what == "open files":
        preexec, words = _limit(resource.RLIMIT_NOFILE, n), (f"ulimit -n` is {n}",)
    else:
        preexec, words = _limit(resource.RLIMIT_AS, _address_space_past_imports()), ("ulimit -v",)
    ended = run(["run", "--quiet"], cwd=tmp_path, preexec=preexec)
    assert ended.rc == 2, ended.err
    one_error_line(ended.err, "cannot start the map", *words)


# -- two runs, one output directory ----------------------------------------------------------


def test_two_runs_on_one_output_directory_leave_one_whole_merge(tmp_path) -> None:
    """Started together: one claims the directory and merges; the other is refused with
    one line (the directory is taken, or -- if the first ended before it looked --
    holds the first run's files).  The merged file is the winner's, whole."""
    out = tmp_path / "out"
    argv = ["run", "--generate", "200000", "--handler", "count", "--json"]
    argv += ["--write", str(out), "--merge", str(out / "all.pcapng")]
    procs = [start(argv, cwd=tmp_path) for _ in range(2)]
    ended = [finish(p) for p in procs]
    assert sorted(e.rc for e in ended) == [0, 2], [(e.rc, e.err) for e in ended]
    won = next(e for e in ended if e.rc == 0)
    lost = next(e for e in ended if e.rc == 2)
    one_error_line(lost.err, f"--write {out}")
    assert won.summary["merged"] == won.summary["rx"] == 200_000
    with open_capture(out / "all.pcapng") as r:
        assert len(r.read_all()) == 200_000
    written = {Path(f).name for f in won.summary["files"]}
    assert {p.name for p in out.iterdir()} == {"all.pcapng", *written}  # no temporary left


def test_a_run_holding_its_directory_refuses_a_second(tmp_path, fifo) -> None:
    """The claim lasts the whole run: a second run is refused while the first still
    reads (its source, a FIFO the test holds open)."""
    out = tmp_path / "out"
    outs = ["--write", str(out), "--merge", str(out / "all.pcapng")]
    first = start(
        ["run", "--json", "-i", "0.05", "--handler", "count", *outs, str(fifo)], cwd=tmp_path
    )
    w = Writer(fifo)
    w.open()
    try:
        w.write(DEMO)
        wait_first_line(first)
        second = run(["run", "--quiet", "--handler", "count", *outs], cwd=tmp_path)
    finally:
        w.close()  # the first run reads the end of its capture
    ended = finish(first)
    assert second.rc == 2
    one_error_line(second.err, "another cpumap run is writing there")
    assert ended.rc == 0, ended.err
    assert ended.summary["merged"] == ended.summary["rx"] == whole_packets(DEMO)


SLOW_FINISH = """
import pathlib, threading

class SlowFinish:
    def __init__(self):
        self.n = 0
    def __call__(self, skb):
        self.n += 1
    def finish(self):
        pathlib.Path("finishing").touch()  # the run is closing: its rings are drained
        threading.Event().wait()
"""


@pytest.mark.parametrize(
    "signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)]
)
def test_a_second_signal_cuts_a_close_waiting_for_finish(tmp_path: Path, signals) -> None:
    """Reading done and every ring drained, the close waits for a ``finish()`` that never
    returns: the second signal ends that wait (CpuMap.hurry_close) -- well before the
    close's own 60 s -- the summary balances and the status is the first signal's."""
    (tmp_path / "slowfinish.py").write_text(SLOW_FINISH)
    proc = start(
        ["run", "--generate", "2000", "--handler", "slowfinish:SlowFinish", "--json",
         "--cpus", LAST_CPU],
        cwd=tmp_path,
    )  # fmt: skip
    marker = tmp_path / "finishing"
    wait_for(lambda: marker.exists() or proc.poll() is not None, BOUND, "finish() to run")
    assert proc.poll() is None, "the run ended before finish() hung"
    first, second = signals
    proc.send_signal(first)
    # Two signals sent back to back may arrive as one (a pending signal is one bit): the
    # second goes after the run said it heard the first.
    said = wait_line(proc.stderr)
    assert "the workers are finishing (a second signal stops them at once)" in said, said
    proc.send_signal(second)
    # Half the close's own 60 s wait: a close that was not cut fails here.
    ended = finish(proc, bound=min(BOUND, 30.0))
    assert ended.rc == STATUS[first], ended.err
    s = ended.summary
    balanced(s)
    assert s["stopped_by"] == first.name and s["stopped_at_once"] == second.name, s
    assert s["outcomes"].get("delivered") == 2000  # drained before: nothing lost
