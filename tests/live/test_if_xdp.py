"""``<linux/if_xdp.h>`` as declared in :mod:`cpumap.live.if_xdp`: every size and field offset.

The expected numbers are the kernel's (``include/uapi/linux/if_xdp.h``, Linux 6.8 and
later), written out by hand rather than derived from the structures under test.  Where a C
compiler and the system's header are present, the header's own layout is checked too (for
the fields that header has: an older header lacks ``tx_metadata_len``).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from cpumap.live import if_xdp as x

# (structure, its size, {field: offset})
LAYOUTS: list[tuple[type[ctypes.Structure], int, dict[str, int]]] = [
    (
        x.sockaddr_xdp,
        16,
        {
            "sxdp_family": 0,
            "sxdp_flags": 2,
            "sxdp_ifindex": 4,
            "sxdp_queue_id": 8,
            "sxdp_shared_umem_fd": 12,
        },
    ),
    (x.xdp_umem_reg_v1, 24, {"addr": 0, "len": 8, "chunk_size": 16, "headroom": 20}),
    (
        x.xdp_umem_reg,
        32,
        {"addr": 0, "len": 8, "chunk_size": 16, "headroom": 20, "flags": 24, "tx_metadata_len": 28},
    ),
    (x.xdp_ring_offset, 32, {"producer": 0, "consumer": 8, "desc": 16, "flags": 24}),
    (x.xdp_mmap_offsets, 128, {"rx": 0, "tx": 32, "fr": 64, "cr": 96}),
    (x.xdp_desc, 16, {"addr": 0, "len": 8, "options": 12}),
    (
        x.xdp_statistics,
        48,
        {
            "rx_dropped": 0,
            "rx_invalid_descs": 8,
            "tx_invalid_descs": 16,
            "rx_ring_full": 24,
            "rx_fill_ring_empty_descs": 32,
            "tx_ring_empty_descs": 40,
        },
    ),
    (x.xdp_options, 4, {"flags": 0}),
]


@pytest.mark.parametrize(
    ("struct", "size", "offsets"), LAYOUTS, ids=lambda v: getattr(v, "__name__", "")
)
def test_every_size_and_field_offset(
    struct: type[ctypes.Structure], size: int, offsets: dict[str, int]
) -> None:
    assert ctypes.sizeof(struct) == size
    assert [name for name, *_ in struct._fields_] == list(offsets)
    assert {name: getattr(struct, name).offset for name in offsets} == offsets


def test_constants() -> None:
    assert (x.AF_XDP, x.SOL_XDP) == (44, 283)
    options = (
        x.XDP_MMAP_OFFSETS,
        x.XDP_RX_RING,
        x.XDP_TX_RING,
        x.XDP_UMEM_REG,
        x.XDP_UMEM_FILL_RING,
        x.XDP_UMEM_COMPLETION_RING,
        x.XDP_STATISTICS,
        x.XDP_OPTIONS,
    )
    assert options == (1, 2, 3, 4, 5, 6, 7, 8)
    bind = (x.XDP_SHARED_UMEM, x.XDP_COPY, x.XDP_ZEROCOPY, x.XDP_USE_NEED_WAKEUP)
    assert bind == (1, 2, 4, 8)
    pgoffs = (
        x.XDP_PGOFF_RX_RING,
        x.XDP_PGOFF_TX_RING,
        x.XDP_UMEM_PGOFF_FILL_RING,
        x.XDP_UMEM_PGOFF_COMPLETION_RING,
    )
    assert pgoffs == (0, 0x80000000, 0x100000000, 0x180000000)
    assert (x.XDP_RING_NEED_WAKEUP, x.XDP_OPTIONS_ZEROCOPY) == (1, 1)
    assert x.XDP_UMEM_UNALIGNED_CHUNK_FLAG == 1
    assert x.XSK_UNALIGNED_BUF_ADDR_MASK == (1 << 48) - 1
    assert (x.XDP_PACKET_HEADROOM, x.UMEM_ENTRY_SIZE) == (256, 8)


HEADER = Path("/usr/include/linux/if_xdp.h")
PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include <linux/if_xdp.h>
#define F(s, f) printf(#s " " #f " %zu\n", offsetof(struct s, f))
#define S(s) printf(#s " sizeof %zu\n", sizeof(struct s))
int main(void) {
    S(sockaddr_xdp); F(sockaddr_xdp, sxdp_flags); F(sockaddr_xdp, sxdp_ifindex);
    F(sockaddr_xdp, sxdp_queue_id); F(sockaddr_xdp, sxdp_shared_umem_fd);
    F(xdp_umem_reg, len); F(xdp_umem_reg, chunk_size); F(xdp_umem_reg, headroom);
    F(xdp_umem_reg, flags);
    S(xdp_ring_offset); F(xdp_ring_offset, flags);
    S(xdp_mmap_offsets); F(xdp_mmap_offsets, tx); F(xdp_mmap_offsets, fr);
    F(xdp_mmap_offsets, cr);
    S(xdp_desc); F(xdp_desc, len); F(xdp_desc, options);
    S(xdp_statistics); F(xdp_statistics, rx_ring_full);
    F(xdp_statistics, rx_fill_ring_empty_descs); F(xdp_statistics, tx_ring_empty_descs);
    S(xdp_options);
    return 0;
}
"""


def test_the_system_header_agrees(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not HEADER.exists():
        pytest.skip("needs a C compiler and <linux/if_xdp.h> (linux-libc-dev)")
    src, exe = tmp_path / "probe.c", tmp_path / "probe"
    src.write_text(PROBE)
    subprocess.run([cc, "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        name, member, value = line.split()
        struct = getattr(x, name)
        ours = ctypes.sizeof(struct) if member == "sizeof" else getattr(struct, member).offset
        assert ours == int(value), line
