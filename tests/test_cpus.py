"""CPU lists and limits: the kernel's list format, both ways."""

from __future__ import annotations

import pytest

from cpumap.cpus import format_cpu_list, nr_cpus, parse_cpu_list, possible_cpus, usable_cpus


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == frozenset({0, 1, 2, 3, 8, 10, 11})
    assert parse_cpu_list("0") == frozenset({0})
    assert parse_cpu_list("") == frozenset()


@pytest.mark.parametrize("text", ["x", "0-", "3-1", "-1", "1-x", "0,,a"])
def test_parse_cpu_list_refuses_what_is_not_a_list(text: str) -> None:
    with pytest.raises(ValueError, match="is not a CPU number or a range like 0-3"):
        parse_cpu_list(text)


@pytest.mark.parametrize(
    ("cpus", "text"),
    [([], ""), ([0], "0"), ([0, 1], "0,1"), ([0, 1, 2, 3, 8], "0-3,8"), ([5, 3, 4, 4], "3-5")],
)
def test_format_cpu_list_folds_ranges_and_parses_back(cpus: list[int], text: str) -> None:
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text) == frozenset(cpus)


def test_the_machine_has_cpus() -> None:
    assert nr_cpus() >= len(possible_cpus()) >= 1
    assert set(usable_cpus()) <= possible_cpus()
