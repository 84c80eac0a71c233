"""The command line, the sinks and the embedded demo, end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from cpumap import possible_cpus
from cpumap.capture import open_capture
from cpumap.cli import UsageError, main, parse_cpus
from cpumap.demo import DEMO_PACKETS, demo_capture_path, make_demo_capture

ROOT = Path(__file__).resolve().parents[1]


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
    assert "every frame accounted for" in text
    assert re.search(r"received\s+│\s+2,000", text)
    assert re.search(r"delivered\s+│\s+2,000", text)
    assert "top 10 of 48 flows" in text
    assert "[fd" in text  # IPv6 endpoints printed verbatim, not eaten as markup


@pytest.mark.slow
def test_write_and_merge_per_cpu_captures(tmp_path) -> None:
    out = tmp_path / "out"
    merged = tmp_path / "all.pcapng"
    rc, text = run_cli("run", "--write", str(out), "--merge", str(merged), "--quiet")
    assert rc == 0, text
    files = sorted(out.glob("cpu*.pcapng"))
    assert len(files) == len(possible_cpus())
    counts = []
    for f in files:
        with open_capture(f) as r:
            counts.append(len(r.read_all()))
    assert sum(counts) == DEMO_PACKETS
    with open_capture(merged) as r, open_capture(demo_capture_path()) as orig:
        got, want = r.read_all(), orig.read_all()
    # The merge restores the capture, frame for frame, in timestamp order.
    assert got.ts_ns.tolist() == want.ts_ns.tolist()
    assert [got.packet(i).data for i in range(len(got))] == [
        want.packet(i).data for i in range(len(want))
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--cpus", "999"], "CPU 999 is not available here; use some of"),
        (["run", "--cpus", "x"], "expected a list like 0,1"),
        (["run", "--qsize", "20000"], "must be 1..16384"),
        (["run", "--program", "nope"], "unknown; use one of"),
        (["run", "--handler", "nope"], "use flow-table, count, or module:function"),
        (["run", "--merge", "x.pcapng"], "needs --write DIR"),
        (["run", "/nonexistent.pcap"], "no such file"),
        (["run", "--handler", "os:nonexistent_attr"], "os:nonexistent_attr"),
        (["run", "--program", "nosuchmodule:f"], "nosuchmodule"),
    ],
)
@pytest.mark.slow
def test_bad_arguments_say_what_to_do(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv, console=Console(record=True))
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_damaged_capture_is_a_positioned_error(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.pcapng"
    data = demo_capture_path().read_bytes()
    bad.write_bytes(data[: len(data) // 2 + 3])  # cut inside a block
    with pytest.raises(SystemExit) as info:
        main(["run", str(bad)], console=Console(record=True))
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "bad.pcapng" in err and "offset" in err and "--skip-bad" in err
    rc, text = run_cli("run", str(bad), "--skip-bad")
    assert rc == 0 and "skipped 1 damaged records" in text


def test_parse_cpus() -> None:
    cpus = sorted(possible_cpus())
    assert parse_cpus(f"{cpus[0]}-{cpus[-1]}") == cpus
    with pytest.raises(UsageError):
        parse_cpus("")


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
def test_user_program_and_handler_from_a_file(tmp_path) -> None:
    mod = tmp_path / "user_steer.py"
    mod.write_text(
        "import cpumap\n"
        "def steer(ctx, cmap):\n"
        "    return cpumap.redirect_map(cmap, 0) if len(ctx.data) < 200 else cpumap.XDP_DROP\n"
        "def handle(skb):\n"
        "    return skb.len > 100\n"
    )
    rc, text = run_cli(
        "run", "--program", f"{mod}:steer", "--handler", f"{mod}:handle", "--cpus", "0"
    )
    assert rc == 0, text
    assert "every frame accounted for" in text
    assert re.search(r"xdp drop\s+│", text) and re.search(r"handler drop\s+│", text)
