"""The command line, the sinks and the embedded demo, end to end (in this process)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from cpumap import possible_cpus
from cpumap.capture import open_capture
from cpumap.cli import UsageError, build_parser, main, parse_cpus
from cpumap.cli.args import chosen_cpus, normalize_argv, rx_cpu
from cpumap.cli.config import RunConfig
from cpumap.cli.report import pace_note
from cpumap.cpus import usable_cpus
from cpumap.demo import DEMO_PACKETS, demo_capture_path, make_demo_capture

ROOT = Path(__file__).resolve().parents[2]
FIRST_CPU = str(min(usable_cpus()))  # a CPU this process may run on
# With no --cpus, the RX side keeps the first usable CPU and the others are steered to.
DEFAULT_TARGETS = usable_cpus()[1:] or usable_cpus()
CAPTURES = ROOT.parent / "shared" / "captures"


def run_cli(*argv: str) -> tuple[int, str]:
    console = Console(record=True, width=200, force_terminal=False)
    rc = main(list(argv), console=console)
    return rc, console.export_text()


def test_the_shipped_demo_capture_is_what_the_code_makes(tmp_path) -> None:
    out = tmp_path / "demo.pcapng"
    assert make_demo_capture(out) == DEMO_PACKETS
    assert out.read_bytes() == demo_capture_path().read_bytes()
    assert demo_capture_path().stat().st_size < 1 << 20
    with open_capture(demo_capture_path()) as r:
        batch = r.read_all()
    assert len(batch) == DEMO_PACKETS


@pytest.mark.slow
def test_run_on_the_demo_accounts_for_every_frame() -> None:
    rc, text = run_cli("run")
    assert rc == 0
    assert "every frame accounted for: received 2,000" in text
    assert re.search(r"received\s+│\s+2,000", text)
    assert re.search(r"delivered\s+│\s+2,000", text)
    assert "top 10 of 48 flows" in text
    assert "[fd" in text  # IPv6 endpoints printed verbatim, not eaten as markup
    first = DEFAULT_TARGETS[0]
    # The per-CPU rows after close, with a capture's default ring.
    assert re.search(rf"│\s+{first} │\s+8192 │\s+retired │", text)
    assert f"on CPU {min(usable_cpus())} -> CPUs" in text


@pytest.mark.slow
def test_write_and_merge_per_cpu_captures(tmp_path) -> None:
    out = tmp_path / "out"
    merged = tmp_path / "all.pcapng"
    rc, text = run_cli("run", "--write", str(out), "--merge", str(merged), "--quiet")
    assert rc == 0, text
    files = sorted(out.glob("cpu*.pcapng"))
    assert [f.name for f in files] == [f"cpu{c}.pcapng" for c in DEFAULT_TARGETS]
    counts = []
    for f in files:
        with open_capture(f) as r:
            counts.append(len(r.read_all()))
    assert sum(counts) == DEMO_PACKETS
    assert f"merged {DEMO_PACKETS:,} packets" in text
    with open_capture(merged) as r, open_capture(demo_capture_path()) as orig:
        got, want = r.read_all(), orig.read_all()
    # The merge restores the capture, frame for frame, in timestamp order.
    assert got.ts_ns.tolist() == want.ts_ns.tolist()
    assert [got.packet(i).data for i in range(len(got))] == [
        want.packet(i).data for i in range(len(want))
    ]


@pytest.mark.slow
def test_write_into_a_directory_with_an_earlier_runs_files_is_refused(tmp_path, capsys) -> None:
    """The stale files would be merged with this run's (every packet twice): refused, and
    the directory left as it was."""
    out = tmp_path / "out"
    rc, _ = run_cli("run", "--write", str(out), "--quiet")
    assert rc == 0
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit) as info:
        run_cli("run", "--write", str(out), "--merge", str(tmp_path / "m.pcapng"), "--quiet")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"already holds cpu{DEFAULT_TARGETS[0]}.pcapng" in err and "from an earlier run" in err
    assert sorted(p.name for p in out.iterdir()) == before
    assert not (tmp_path / "m.pcapng").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--cpus", "999"], "CPU 999 is not available here; use some of"),
        (["run", "--cpus", "x"], "expected a list like 0,1"),
        (["run", "--cpus", "0-"], "'0-' is not a CPU number or a range"),
        (["run", "--cpus", ""], "give at least one CPU"),
        (["run", "-c", FIRST_CPU, "-c", "4095"], "CPU 4095 is not available here"),
        (["run", "--qsize", "20000"], "out of range (must be 1..16384)"),
        (["run", "--program", "nope"], "unknown; use one of"),
        (["run", "--handler", "nope"], "use flow-table, count, or module:function"),
        (["run", "--merge", "x.pcapng"], "needs --write DIR"),
        (["run", "/nonexistent.pcap"], "no such file"),
        (["run", "--handler", "os:nonexistent_attr"], "os:nonexistent_attr"),
        (["run", "--program", "nosuchmodule:f"], "nosuchmodule"),
        (["run", "--metrics-port", "99999"], "99999 is out of range (must be 1..65535)"),
        (["run", "--drop-port", "0"], "0 is out of range (must be 1..65535)"),
        (["run", "--non-ip-index", "-1"], "-1 is out of range (must be >= 0)"),
        (["run", "--non-ip-index", "5", "--cpus", FIRST_CPU], "an index into the 1 CPUs"),
        (["run", "--top", "-3"], "-3 is out of range"),
        (["run", "--duration", "-1"], "must be a number of seconds > 0"),
        (["run", "--interval", "0"], "must be a number of seconds > 0"),
        (["run", "--generate", "-5"], "-5 is out of range"),
        (["run", "--json", "--quiet"], "--json and --quiet: choose one"),
        (["run", "--remote-action", "tx"], "invalid choice: 'tx'"),
        (["run", "--rx-cpu", "4095"], "--rx-cpu: CPU 4095 is not available here; use one of"),
        (["run", "--rx-cpu", "0,1"], "give one CPU number"),
    ],
)
def test_bad_arguments_say_what_to_do(argv, message, capsys) -> None:
    """Checked before any worker starts: none of these forks (the test is not slow)."""
    with pytest.raises(SystemExit) as info:
        main(argv, console=Console(record=True))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_bad_files_say_what_they_are(tmp_path, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a capture\n" * 10)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        ([str(tmp_path)], "is a directory"),
        ([str(text)], str(text)),
        ([str(empty)], str(empty)),
        (["--write", str(afile)], "exists and is not a directory"),
        (["--write", "/proc/cpumap-cannot-be-here"], "cannot create it"),
        (["--write", str(tmp_path / "w"), "--merge", str(tmp_path / "no/all.pcapng")], "not exist"),
        (["--merge", str(tmp_path), "--write", str(tmp_path / "w2")], "is a directory"),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            main(["run", *argv], console=Console(record=True))
        err = capsys.readouterr().err
        assert info.value.code == 2, (argv, err)
        assert message in err, (argv, err)
        assert "--skip-bad" not in err and "Traceback" not in err, err


@pytest.mark.slow
def test_damaged_capture_is_a_positioned_error_after_the_summary(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.pcapng"
    data = demo_capture_path().read_bytes()
    bad.write_bytes(data[: len(data) // 2 + 3])  # cut inside a block
    rc, text = run_cli("run", str(bad))
    assert rc == 4
    assert "every frame accounted for" in text  # what was read before is summarised
    err = capsys.readouterr().err
    assert "bad.pcapng" in err and "offset" in err and "--skip-bad" in err
    rc, text = run_cli("run", str(bad), "--skip-bad")
    assert rc == 0 and "skipped 1 damaged records" in text


def test_parse_cpus() -> None:
    cpus = sorted(possible_cpus())
    assert parse_cpus(f"{cpus[0]}-{cpus[-1]}") == cpus
    with pytest.raises(UsageError):
        parse_cpus("")


def test_cpu_options_as_xdp_bench_and_cpus_combine() -> None:
    ap = build_parser()
    cpus = sorted(possible_cpus())
    args = ap.parse_args(["run", "-c", str(cpus[-1]), "-c", str(cpus[0])])
    assert chosen_cpus(args) == sorted({cpus[0], cpus[-1]})
    args = ap.parse_args(["run", "-c", str(cpus[0]), "--cpus", f"{cpus[0]}-{cpus[-1]}"])
    assert chosen_cpus(args) == cpus


def test_the_rx_side_gets_a_cpu_of_its_own_by_default() -> None:
    """As the kernel's usual set-up (the NIC queue's CPU redirects to others): with no
    CPUs named, every usable CPU but the RX one is steered to, and the RX side is pinned
    to a CPU no entry has whenever there is one."""
    ap = build_parser()
    usable = usable_cpus()
    args = ap.parse_args(["run"])
    targets = chosen_cpus(args)
    assert rx_cpu(args, targets) == usable[0]
    assert targets == (usable[1:] or usable)
    args = ap.parse_args(["run", "--rx-cpu", str(usable[-1])])
    targets = chosen_cpus(args)
    assert rx_cpu(args, targets) == usable[-1]
    assert targets == ([c for c in usable if c != usable[-1]] or usable)
    args = ap.parse_args(["run", "--cpus", str(usable[0])])  # named: the RX side moves
    assert rx_cpu(args, chosen_cpus(args)) == (usable[1] if len(usable) > 1 else usable[0])


def test_the_pace_note_only_when_the_workers_make_the_rx_side_wait() -> None:
    def on(*cpus: int) -> RunConfig:
        return RunConfig(cpus=cpus, rx_cpu=0)

    assert pace_note(0, 100, on(1)) == []  # never waited
    assert pace_note(10, 100, on(1)) == []  # rarely
    assert pace_note(90, 100, on(0, 1)) == []  # the RX CPU has a worker already
    assert pace_note(5, 6, on(1)) == []  # too short a run to say
    (note,) = pace_note(90, 100, on(1, 2))
    assert "waited for room in a full ring 90 times in 100 polls" in note
    assert note.endswith("--cpus 0-2")


def test_a_file_with_no_subcommand_is_run() -> None:
    assert normalize_argv(["trace.pcapng", "-c", "0"]) == ["run", "trace.pcapng", "-c", "0"]
    assert normalize_argv([]) == ["run"]
    assert normalize_argv(["--help"]) == ["--help"]
    assert normalize_argv(["run", "x"]) == ["run", "x"]


def test_help_shows_every_default_and_the_exit_statuses(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps at the terminal's width
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in (
        "(default 2048; 8192 with --af-xdp",
        "(default: l4-hash)",
        "(default: 2.0)",
        "(default: flow-table)",
        "(default: disabled)",
        "(default: 1024)",
        "(default: 10)",
    ):
        assert default in out, default
    assert "exit status:" in out and "130" in out and "143" in out


@pytest.mark.slow
def test_generated_traffic_with_count_handler() -> None:
    rc, text = run_cli("run", "--generate", "5000", "--handler", "count", "--lossy")
    assert rc == 0
    assert re.search(r"received\s+│\s+5,000", text)
    assert "every frame accounted for" in text


@pytest.mark.slow
def test_readme_example_runs() -> None:
    """The README's ten-line example, on the demo capture."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Ten lines of Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 11
    code = code.replace('"trace.pcapng"', repr(str(demo_capture_path())))
    code = code.replace("print(", "result = (")
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    stats = ns["stats"]
    assert stats.rx == DEMO_PACKETS == sum(stats.outcomes().values())
    assert stats.handler_drop == 0 and stats.delivered == DEMO_PACKETS  # no DNS in the demo


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["l4-hash", "l4-proto", "round-robin", "flow-hash"])
@pytest.mark.parametrize("form", [[], ["--per-frame"]])
def test_built_in_programs_from_the_command_line(mode: str, form: list[str]) -> None:
    rc, text = run_cli("run", "--program", mode, *form, "--quiet")
    assert rc == 0, text
    assert "every frame accounted for" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("action", "outcome"),
    [("drop", "second stage drop"), ("pass", "delivered"), ("redirect", "redirected out")],
)
def test_remote_action_runs_a_second_stage_on_each_cpu(action: str, outcome: str) -> None:
    rc, text = run_cli("run", "--remote-action", action, "--handler", "count", "--quiet")
    assert rc == 0, text
    assert re.search(rf"{outcome}\s+│\s+2,000 │\s+100.0%", text), text
    assert f"remote action {action}" in text


@pytest.mark.slow
def test_user_program_and_handler_from_a_file(tmp_path) -> None:
    mod = tmp_path / "user_steer.py"
    mod.write_text(
        "import cpumap\n"
        "def steer(ctx, cmap):\n"
        f"    return cpumap.redirect_map(cmap, {FIRST_CPU}) if len(ctx.data) < 200 "
        "else cpumap.XDP_DROP\n"
        "def handle(skb):\n"
        "    return skb.len > 100\n"
    )
    rc, text = run_cli(
        "run", "--program", f"{mod}:steer", "--handler", f"{mod}:handle", "--cpus", FIRST_CPU
    )
    assert rc == 0, text
    assert "every frame accounted for" in text
    assert re.search(r"xdp drop\s+│", text) and re.search(r"handler drop\s+│", text)


USER_CODE = """
import numpy as np
import cpumap

def raising_handler(skb):
    raise ValueError(f"no frames of length {skb.len} today")

@cpumap.batch_handler
def wrong_shape(batch):
    return np.ones(3, dtype=bool)

def bad_verdict(ctx):
    return "pass"

@cpumap.vectorized
def raising_program(batch):
    raise KeyError("steering table")

class FailingSetup:
    def setup(self, info):
        raise RuntimeError(f"cannot open the database on CPU {info.cpu}")
    def __call__(self, skb):
        return None

class HangingSetup:
    def setup(self, info):
        import threading
        threading.Event().wait()
    def __call__(self, skb):
        return None

class ExitingFinish:
    def __call__(self, skb):
        return None
    def finish(self):
        import os
        os._exit(5)
"""


@pytest.fixture
def user_code(tmp_path) -> Path:
    path = tmp_path / "usercode.py"
    path.write_text(USER_CODE)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "name", "shown"),
    [
        ("--handler", "raising_handler", "ValueError: no frames of length"),
        ("--handler", "wrong_shape", "bad return value"),
        ("--program", "bad_verdict", "got 'pass'"),
        ("--program", "raising_program", "KeyError: 'steering table'"),
    ],
)
def test_user_code_errors_are_shown_once_per_kind_and_the_status_says_so(
    user_code, option, name, shown
) -> None:
    rc, text = run_cli("run", option, f"{user_code}:{name}", "--cpus", FIRST_CPU, "--quiet")
    assert rc == 1, text
    assert shown in text
    assert text.count(shown) == 1  # the first of its kind, then a count
    assert "exit status 1: user error" in text
    assert re.search(r"\((2,000|[\d,]+) frames\); the first", text)


@pytest.mark.slow
def test_a_failing_setup_is_one_clear_message(user_code, capsys) -> None:
    rc, _ = run_cli("run", "--handler", f"{user_code}:FailingSetup", "--cpus", FIRST_CPU)
    assert rc == 1
    err = capsys.readouterr().err
    assert f"setup() raised RuntimeError: cannot open the database on CPU {FIRST_CPU}" in err
    assert "usercode.py" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_hanging_setup_is_killed_at_the_setup_timeout_and_says_so(user_code, capsys) -> None:
    rc, _ = run_cli(
        "run", "--handler", f"{user_code}:HangingSetup", "--cpus", FIRST_CPU,
        "--setup-timeout", "0.5", "--generate", "100",
    )  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "setup() did not finish within 0.5 s; the worker was killed" in err
    assert "--setup-timeout sets the deadline" in err and "setup() raised" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_finish_that_cannot_report_is_a_user_error_named_not_a_death(user_code) -> None:
    rc, text = run_cli(
        "run", "--handler", f"{user_code}:ExitingFinish", "--cpus", FIRST_CPU,
        "--generate", "1000", "--quiet",
    )  # fmt: skip
    assert rc == 1, text
    assert "finish() failed: the worker exited with status 5 without its report" in text
    assert "exit status 1: user error" in text and "died" not in text
    assert re.search(r"delivered\s+│\s+1,000", text)  # nothing lost: every frame delivered


@pytest.mark.slow
def test_non_ethernet_captures_under_a_built_in_mode_say_why_they_pass() -> None:
    raw = CAPTURES / "linktypes" / "tcpdump__LINKTYPE_RAW_ipv4.pcap"
    if not raw.is_file():
        pytest.skip("third-party captures not found")
    rc, text = run_cli("run", str(raw), "--quiet")
    assert rc == 0
    assert "parse Ethernet frames only" in text and "raw IP (101)" in text
    assert "-p flow-hash" in text
    rc, text = run_cli("run", str(raw), "-p", "flow-hash", "--quiet")
    assert rc == 0 and "parse Ethernet frames only" not in text
    assert re.search(r"delivered\s+│", text)


@pytest.mark.slow
def test_a_handler_that_never_returns_is_killed_and_its_frames_counted(
    tmp_path, monkeypatch
) -> None:
    import cpumap.cli.run as cli_run

    (tmp_path / "stuck_handler.py").write_text(
        "import time\ndef handle(skb):\n    time.sleep(3600)\n"
    )
    monkeypatch.setattr(cli_run, "DRAIN_TIMEOUT", 1.0)
    rc, text = run_cli(
        "run",
        "--handler",
        f"{tmp_path / 'stuck_handler.py'}:handle",
        "--cpus",
        FIRST_CPU,
        "--quiet",
    )
    assert rc == 3, text
    assert "a handler does not return; its worker is killed" in text
    assert "every frame accounted for" in text and re.search(r"lost\s+│", text)


@pytest.mark.parametrize(
    ("argv", "qsize", "poll"),
    [
        (["--generate", "10"], 8192, 4096),  # a lossless bulk source: big polls
        ([], 8192, 4096),  # the demo capture
        (["--iface", "lo"], 2048, 1024),  # live: a poll's size is latency
        (["--iface", "lo", "--af-xdp"], 8192, 1024),  # its polls hand the map bursts
        (["--iface", "lo", "--af-xdp", "-q", "512"], 512, 1024),
        (["--generate", "10", "-q", "4096"], 4096, 2048),  # half the ring at most
        (["--generate", "10", "-q", "256"], 256, 1024),  # ... but never below a live poll
        (["--generate", "10", "--poll", "64"], 8192, 64),  # as given
    ],
)
def test_the_default_ring_and_poll_follow_the_source(
    argv: list[str], qsize: int, poll: int
) -> None:
    from cpumap.cli.args import build_parser, run_config

    config = run_config(build_parser().parse_args(["run", *argv]))
    assert (config.qsize, config.source.poll) == (qsize, poll)
