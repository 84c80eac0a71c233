"""``Skb.to_scapy()`` / ``to_dpkt()`` and the same for an ``SkbBatch`` row."""

from __future__ import annotations

import builtins
import ipaddress

import numpy as np
import pytest

from cpumap.abi import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW
from cpumap.skb import Skb, SkbBatch
from tests.helpers import udp_frame

scapy_all = pytest.importorskip("scapy.all", reason="the scapy extra is not installed")
dpkt = pytest.importorskip("dpkt", reason="the dpkt extra is not installed")

FRAME = udp_frame(7, 3, size=80)
IP_PART = FRAME[14:]


def test_skb_to_scapy_dissects_ethernet_ip_udp() -> None:
    skb = Skb(FRAME)
    p = skb.to_scapy()
    assert p.haslayer(scapy_all.Ether) and p.haslayer(scapy_all.UDP)
    assert p[scapy_all.IP].src == str(ipaddress.ip_address(skb.src))
    assert (p[scapy_all.UDP].sport, p[scapy_all.UDP].dport) == (skb.sport, skb.dport)
    assert bytes(p) == FRAME


def test_skb_to_dpkt_dissects_ethernet_ip_udp() -> None:
    skb = Skb(FRAME)
    e = skb.to_dpkt()
    assert isinstance(e, dpkt.ethernet.Ethernet)
    assert (e.data.data.sport, e.data.data.dport) == (skb.sport, skb.dport)
    assert e.data.src == skb.src


def test_raw_ip_frames_start_at_ip() -> None:
    skb = Skb(IP_PART, linktype=LINKTYPE_RAW)
    assert isinstance(skb.to_scapy(), scapy_all.IP)
    assert isinstance(skb.to_dpkt(), dpkt.ip.IP)


def test_linux_cooked_frames() -> None:
    sll = b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 6 + b"\x00\x00" + b"\x08\x00" + IP_PART
    skb = Skb(sll, linktype=LINKTYPE_LINUX_SLL)
    assert skb.to_scapy().haslayer(scapy_all.UDP)
    assert isinstance(skb.to_dpkt(), dpkt.sll.SLL)


def test_an_unknown_link_type_is_raw_for_scapy_and_an_error_for_dpkt() -> None:
    skb = Skb(b"\x01\x02\x03", linktype=60000)
    assert isinstance(skb.to_scapy(), scapy_all.Raw)
    with pytest.raises(ValueError, match="link type 60000"):
        skb.to_dpkt()


def test_a_batch_row_is_handed_over_the_same() -> None:
    frames = [udp_frame(i, i, size=64 + i) for i in range(4)]
    width = max(len(f) for f in frames)
    rows = np.zeros((4, width), dtype=np.uint8)
    for i, f in enumerate(frames):
        rows[i, : len(f)] = np.frombuffer(f, np.uint8)
    batch = SkbBatch(rows, offset=0, length=np.array([len(f) for f in frames]),
                     linktype=LINKTYPE_ETHERNET)  # fmt: skip
    for i, f in enumerate(frames):
        assert bytes(batch.to_scapy(i)) == f
        assert batch.to_dpkt(i).data.src == batch.skb(i).src  # dpkt re-packs checksums
        assert batch.to_dpkt(i).data.data.sport == batch.sport[i]


def test_a_missing_extra_says_which_to_install(monkeypatch) -> None:
    real = builtins.__import__

    def no_dpkt(name, *args, **kw):
        if name == "dpkt" or name.startswith("dpkt."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args, **kw)

    monkeypatch.delitem(__import__("sys").modules, "dpkt")
    monkeypatch.setattr(builtins, "__import__", no_dpkt)
    with pytest.raises(ImportError, match=r"pip install 'cpumap\[dpkt\]'"):
        Skb(FRAME).to_dpkt()
