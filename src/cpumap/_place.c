/*
 * cpumap._place: a capture file's records (pcap; pcapng EPBs) copied from its mapping
 * straight into lent frames.
 *
 * Why this is compiled (the package is Python first):
 *  - The walk is a chain: where record i + 1 starts depends on the caplen in record i's
 *    header, so no vectorized operation takes it in one call (as cpumap._records says).
 *  - The copy is a ragged gather-scatter: packets of every length, from every offset of
 *    the file, to every frame of the pool.  numpy has no such primitive; the general path
 *    (engine/rx.py RxProducer._fill/_copy_ragged) approximates it with a gather per
 *    length class over a second copy of the bytes (the chunk read into memory), ~0.2 us
 *    a packet on the main job.  Here a packet costs one memcpy, from the page cache.
 *  - The mapping may lose pages under the run: a file truncated while it is read makes
 *    any access past its new end raise SIGBUS, which kills the process -- no Python or
 *    numpy code can catch it (a numpy view of the mapping would crash the RX process, or
 *    a worker if the mapping were shared).  Here every access to the mapping happens
 *    between a sigsetjmp and the end of the call, with a SIGBUS handler installed for the
 *    call only (the previous one restored before returning): a fault jumps back and the
 *    call returns the frames placed before it and the byte offset that faulted, which
 *    the caller reports as an error naming the file.  The handler acts only for the
 *    thread that armed it (a thread-local flag): a SIGBUS elsewhere gets the previous
 *    disposition back and faults again into it.
 *
 * What it must equal: the general path, record for record.  Frame bytes and descriptors
 * as RxProducer._fill writes them from capture/pcap.py's and pcapng.py's batches (length
 * truncated at the frame's room and counted TRUNCATED; wire_len; ts_ns = sec * 1e9 +
 * sub * unit, or pcapng's floor(ts / units * 1e9) + if_tsoffset; ifindex 0, or pcapng's
 * interface id; rx_queue 0; the link type, canonical; headroom, meta_len 0, hops 0), and
 * the flow hash (rx_hash, hash_type) as Skb(bytes).hash computes it
 * (skb/frame.py's parser and skb/flow_hash.py), for every frame whose link type the
 * parser reads and that is IP; HASH_NONE otherwise (the worker computes it: 0).  It
 * refuses to judge anything the general reader would call damage: it stops before such
 * a record (caplen above the link type's maximum, caplen above the wire length, a record
 * cut by the end of the mapping; pcapng: any block but a sound EPB of a declared
 * interface whose time fits) and says so, and the caller hands the file to the general
 * reader from that byte (capture/mapped.py).  Held equal by
 * tests/capture/test_mapped.py (every capture of the shared corpus, generated ones, and
 * hypothesis frames for the hash).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

/* Why the walk stopped. */
enum {
    STOP_FULL = 0,   /* every lent frame placed */
    STOP_END = 1,    /* the mapping ends exactly at a record boundary */
    STOP_JUDGE = 2,  /* a record the fast walk will not judge: the general reader's */
    STOP_FAULT = 3,  /* SIGBUS: the file lost pages under the run (truncated) */
};

#define HASH_NONE 0
#define HASH_L3 2
#define HASH_L4 3

/* The frame pool's descriptor (engine/frame_pool.py DESCRIPTOR), checked from Python. */
struct desc {
    uint32_t length;
    uint32_t wire_len;
    int64_t ts_ns;
    uint32_t ifindex;
    uint32_t rx_queue;
    uint16_t linktype;
    uint16_t headroom;
    uint16_t meta_len;
    uint16_t hops;
    uint32_t rx_hash;
    uint16_t hash_type;
    uint16_t reserved;
};
_Static_assert(sizeof(struct desc) == 40, "descriptor is 40 bytes");

/* -- the flow hash: skb/frame.py's parser, the fields flow_hash() reads ----------------- */

static inline uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* headers.py IPV6_EXT_UNIT: the header's length unit, -1 for no extension header. */
static int ext_unit(unsigned nh)
{
    switch (nh) {
    case 0: case 43: case 60: case 135: case 139: case 140: return 8;
    case 44: return 0;
    case 51: return 4;
    default: return -1;
    }
}

/* headers.py L4_HEADERS: bytes a header with ports needs (0: not one with ports). */
static unsigned ports_need(unsigned proto)
{
    switch (proto) {
    case 6: return 20;    /* TCP */
    case 17: return 8;    /* UDP */
    case 132: return 12;  /* SCTP */
    case 136: return 8;   /* UDPLite */
    default: return 0;
    }
}

static int family_is(uint32_t family)  /* 4, 6, or 0 (frame.py _family_protocol) */
{
    if (family == 2)
        return 4;
    return (family == 10 || family == 24 || family == 28 || family == 30) ? 6 : 0;
}

static inline int is_tpid(uint32_t t) { return t == 0x8100 || t == 0x88A8 || t == 0x9100; }

/* flow_hash.py flow_hash, from the folded address words a, b, ports p, q and protocol k. */
static uint32_t mix(uint32_t a, uint32_t b, uint32_t p, uint32_t q, uint32_t k)
{
    if (a > b) { uint32_t t = a; a = b; b = t; }
    uint64_t m = p <= q ? ((uint64_t)p << 16 | q) : ((uint64_t)q << 16 | p);
    uint64_t v = (uint64_t)a * 0x9E3779B97F4A7C15ull + (uint64_t)b * 0xC2B2AE3D27D4EB4Full +
                 m * 0x165667B19E3779F9ull + (uint64_t)k * 0x27D4EB2F165667C5ull;
    v ^= v >> 29;
    v *= 0xBF58476D1CE4E5B9ull;
    return (uint32_t)(v ^ (v >> 32));
}

/*
 * Skb(d[:n], linktype=lt).hash, and its type: HASH_L4 where ports went into it, HASH_L3
 * where only addresses and the protocol did, HASH_NONE where the frame is not IP (hash 0,
 * left to the worker, as a NIC gives no hash for what it does not parse).  Step for step
 * frame.py's _parse: link layer, VLAN tags, IPv4 / IPv6 with its extension headers,
 * transport.
 */
static int frame_hash(const uint8_t *d, uint32_t n, unsigned lt, uint32_t *out)
{
    uint32_t proto, off;
    switch (lt) {
    case 1: /* Ethernet */
        if (n < 14) return HASH_NONE;
        proto = be16(d + 12);
        if (proto < 0x600) return HASH_NONE; /* 802.3 length: LLC or raw 802.3 */
        off = 14;
        break;
    case 113: /* Linux SLL */
        if (n < 16) return HASH_NONE;
        proto = be16(d + 14);
        off = 16;
        break;
    case 276: /* Linux SLL2 */
        if (n < 20) return HASH_NONE;
        proto = be16(d);
        off = 20;
        break;
    case 0: { /* BSD loopback: the family in either byte order */
        if (n < 4) return HASH_NONE;
        uint32_t fam = le32(d);
        if (fam > 0xFFFF) fam = be32(d);
        int v = family_is(fam);
        proto = v == 4 ? 0x0800 : v == 6 ? 0x86DD : 0;
        off = 4;
        break;
    }
    case 108: { /* OpenBSD loopback */
        if (n < 4) return HASH_NONE;
        int v = family_is(be32(d));
        proto = v == 4 ? 0x0800 : v == 6 ? 0x86DD : 0;
        off = 4;
        break;
    }
    case 101: /* raw IP: the version nibble */
        if (n < 1) return HASH_NONE;
        proto = (d[0] >> 4) == 4 ? 0x0800 : (d[0] >> 4) == 6 ? 0x86DD : 0;
        off = 0;
        break;
    case 228: proto = 0x0800; off = 0; break;
    case 229: proto = 0x86DD; off = 0; break;
    default: return HASH_NONE;
    }
    if (is_tpid(proto)) { /* frame.py _parse_vlans */
        int tags = 0;
        while (is_tpid(proto)) {
            if (tags == 8 || off + 4 > n) return HASH_NONE;
            proto = be16(d + off + 2);
            off += 4;
            tags++;
        }
        if (proto < 0x600) return HASH_NONE;
    }
    uint32_t a, b, k, th; /* th: where the transport header starts; 0: none */
    int frag;
    if (proto == 0x0800) {
        if (off + 20 > n) return HASH_NONE;
        const uint8_t *ip = d + off;
        unsigned ihl = ip[0] & 0x0F;
        if ((ip[0] >> 4) != 4 || ihl < 5) return HASH_NONE;
        a = be32(ip + 12);
        b = be32(ip + 16);
        k = ip[9];
        uint32_t fw = be16(ip + 6);
        frag = (fw & 0x2000) || (fw & 0x1FFF);
        th = off + 4 * ihl;
        if (th > n || (fw & 0x1FFF)) th = 0;
    } else if (proto == 0x86DD) {
        if (off + 40 > n) return HASH_NONE;
        const uint8_t *ip = d + off;
        if ((ip[0] >> 4) != 6) return HASH_NONE;
        a = be32(ip + 8) ^ be32(ip + 12) ^ be32(ip + 16) ^ be32(ip + 20);
        b = be32(ip + 24) ^ be32(ip + 28) ^ be32(ip + 32) ^ be32(ip + 36);
        unsigned nh = ip[6];
        uint32_t pos = off + 40;
        frag = 0;
        th = 0;
        int i, walked = 1;
        for (i = 0; i < 16; i++) {
            int unit = ext_unit(nh);
            if (unit < 0) break;
            uint32_t size = pos + 8 <= n ? (uint32_t)unit * d[pos + 1] + 8 : 8;
            if (pos + size > n) { walked = 0; break; } /* truncated: ip_proto = nh */
            if (nh == 44) {
                frag = 1;
                if (be16(d + pos + 2) & 0xFFF8) { nh = d[pos]; walked = 0; break; }
            }
            nh = d[pos];
            pos += size;
        }
        if (walked && i == 16 && ext_unit(nh) >= 0) walked = 0; /* chain too long */
        k = nh;
        if (walked) th = pos;
    } else {
        return HASH_NONE;
    }
    uint32_t p = 0, q = 0;
    unsigned need = ports_need(k);
    int ports = !frag && th && need && th + need <= n;
    if (ports) {
        p = be16(d + th);
        q = be16(d + th + 2);
    }
    *out = mix(a, b, p, q, k);
    return ports ? HASH_L4 : HASH_L3;
}

/* -- the SIGBUS guard -------------------------------------------------------------------- */

static _Thread_local sigjmp_buf guard_env;
static _Thread_local volatile sig_atomic_t guard_armed;
static _Thread_local const volatile uint8_t *guard_addr;
/* The disposition before the first of the calls running now; installed and restored by
 * the first in and the last out, so calls in several threads never restore each other's. */
static struct sigaction guard_old;
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static int guard_users;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    if (guard_armed) {
        guard_armed = 0;
        guard_addr = (const uint8_t *)info->si_addr;
        siglongjmp(guard_env, 1);
    }
    /* Not ours (another thread): the old disposition, and the access faults again. */
    sigaction(sig, &guard_old, NULL);
}

static void guard_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    pthread_mutex_lock(&guard_lock);
    if (guard_users++ == 0)
        sigaction(SIGBUS, &sa, &guard_old);
    pthread_mutex_unlock(&guard_lock);
}

static void guard_remove(void)
{
    pthread_mutex_lock(&guard_lock);
    if (--guard_users == 0)
        sigaction(SIGBUS, &guard_old, NULL);
    pthread_mutex_unlock(&guard_lock);
}

/* -- place --------------------------------------------------------------------------------- */

static int get_u64(PyObject *o, unsigned long long *v)
{
    *v = PyLong_AsUnsignedLongLong(o);
    return (*v == (unsigned long long)-1 && PyErr_Occurred()) ? -1 : 0;
}

/* One call's walk: where it writes, and how far it got (read after a jump: volatile). */
struct walk {
    const uint8_t *m;
    uint64_t end;
    uint8_t *px;
    struct desc *dx;
    const uint32_t *fr;
    Py_ssize_t nf;
    uint64_t fs;
    uint32_t hr, room;
    volatile Py_ssize_t placed;
    volatile uint64_t pos;
    volatile Py_ssize_t truncated;
    int why;
};

/* The packet at `src` (cap captured bytes) into the walk's next frame, with its descriptor. */
static inline void put(struct walk *w, const uint8_t *src, uint32_t cap, uint32_t wire,
                       int64_t ts, uint32_t ifindex, unsigned lt)
{
    uint32_t f = w->fr[w->placed];
    uint32_t len = cap <= w->room ? cap : w->room;
    uint8_t *dst = w->px + (uint64_t)f * w->fs + w->hr;
    memcpy(dst, src, len);
    struct desc *de = w->dx + f;
    de->length = len;
    de->wire_len = wire;
    de->ts_ns = ts;
    de->ifindex = ifindex;
    de->rx_queue = 0;
    de->linktype = (uint16_t)lt;
    de->headroom = (uint16_t)w->hr;
    de->meta_len = 0;
    de->hops = 0;
    uint32_t hv = 0;
    de->hash_type = (uint16_t)frame_hash(dst, len, lt, &hv); /* the copy: cut as the worker's */
    de->rx_hash = hv;
    de->reserved = 0;
    if (len < cap)
        w->truncated = w->truncated + 1;
    w->placed = w->placed + 1;
}

/* pcap: a 16-byte record header (seconds, sub-seconds, caplen, wire length), the bytes. */
struct pcap_fmt {
    int big;
    uint64_t unit, maxcap;
    unsigned lt;
};

static void walk_pcap(struct walk *w, const struct pcap_fmt *f)
{
    while (w->placed < w->nf) {
        uint64_t p = w->pos;
        if (p == w->end) { w->why = STOP_END; return; }
        if (w->end - p < 16) { w->why = STOP_JUDGE; return; }
        const uint8_t *h = w->m + p;
        uint32_t (*rd)(const uint8_t *) = f->big ? be32 : le32;
        uint32_t sec = rd(h), sub = rd(h + 4), cap = rd(h + 8), wire = rd(h + 12);
        if (cap > f->maxcap || cap > wire || w->end - p - 16 < cap) {
            w->why = STOP_JUDGE; /* capture/pcap.py's damage: the general reader says it */
            return;
        }
        put(w, h + 16, cap, wire, (int64_t)sec * 1000000000 + (int64_t)sub * (int64_t)f->unit,
            0, f->lt);
        w->pos = p + 16 + cap;
    }
}

/* pcapng: Enhanced Packet Blocks of one section, against its interface table. */
enum { IF_VALID, IF_LINKTYPE, IF_MAXCAP, IF_UPS, IF_TSOFFSET, IF_FIELDS };

struct epb_fmt {
    int big;
    uint64_t max_block;
    const int64_t *ifaces; /* IF_FIELDS per interface id */
    uint64_t n_ifaces;
};

/* pcapng.py _ts_ns: floor(t / ups * 1e9) + off * 1e9, exact; 0 when it does not fit an
 * int64 (the general reader keeps such a time in wide_times: not judged here). */
static int ts_ns(uint64_t t, uint64_t ups, int64_t off, int64_t *out)
{
    __int128 ns = (__int128)(t / ups) * 1000000000 +
                  (__int128)(t % ups) * 1000000000 / ups + (__int128)off * 1000000000;
    if (ns > INT64_MAX || ns < INT64_MIN)
        return 0;
    *out = (int64_t)ns;
    return 1;
}

static void walk_epb(struct walk *w, const struct epb_fmt *f)
{
    uint32_t (*rd)(const uint8_t *) = f->big ? be32 : le32;
    while (w->placed < w->nf) {
        uint64_t p = w->pos;
        if (p == w->end) { w->why = STOP_END; return; }
        w->why = STOP_JUDGE; /* until this block is known to be a sound EPB */
        if (w->end - p < 32) return;
        const uint8_t *h = w->m + p;
        uint32_t type = rd(h), blen = rd(h + 4);
        if (type != 6 || blen < 32 || (blen & 3) || blen > f->max_block || blen > w->end - p)
            return;
        if (rd(h + blen - 4) != blen) return;
        uint32_t iface = rd(h + 8), cap = rd(h + 20), wire = rd(h + 24);
        if (iface >= f->n_ifaces) return;
        const int64_t *it = f->ifaces + (uint64_t)iface * IF_FIELDS;
        if (!it[IF_VALID] || cap > wire || (uint64_t)cap > (uint64_t)it[IF_MAXCAP] ||
            32 + (((uint64_t)cap + 3) & ~(uint64_t)3) > blen)
            return;
        int64_t ts;
        uint64_t t = (uint64_t)rd(h + 12) << 32 | rd(h + 16);
        if (!ts_ns(t, (uint64_t)it[IF_UPS], it[IF_TSOFFSET], &ts)) return;
        w->why = STOP_FULL;
        put(w, h + 28, cap, wire, ts, iface, (unsigned)it[IF_LINKTYPE]);
        w->pos = p + blen;
    }
}

/*
 * The common part of place() and place_epb(): args[0..6] are
 *   map, pos, pool, frame_size, headroom, desc, frames
 * and `walker` walks the format.  From byte `pos` of the mapping `map` (read only), one
 * record per frame of `frames` (a uint32 buffer of lent frame indices): its bytes at
 * `headroom` of the frame in `pool` (the pool's flat bytes), its descriptor in `desc`
 * (the pool's descriptor array as bytes).  Stops when every frame is placed, at the end
 * of the mapping, before a record it will not judge, or at a fault.  Returns (placed, pos,
 * why, truncated, fault): how many were placed, the offset of the first record not
 * placed, why it stopped (STOP_*), how many were cut at the frame's room, and for a
 * fault the byte offset in the mapping that faulted (else -1).
 */
static PyObject *run(PyObject *const *args, int pcapng, const void *fmt)
{
    unsigned long long start, fs, hr;
    if (get_u64(args[1], &start) || get_u64(args[3], &fs) || get_u64(args[4], &hr))
        return NULL;
    if (hr >= fs || hr > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "bad headroom");
        return NULL;
    }
    Py_buffer map, pool, dsc, frm;
    if (PyObject_GetBuffer(args[0], &map, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &pool, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&map);
        return NULL;
    }
    if (PyObject_GetBuffer(args[5], &dsc, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&pool);
        PyBuffer_Release(&map);
        return NULL;
    }
    if (PyObject_GetBuffer(args[6], &frm, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&dsc);
        PyBuffer_Release(&pool);
        PyBuffer_Release(&map);
        return NULL;
    }
    struct walk w = {
        .m = (const uint8_t *)map.buf,
        .end = (uint64_t)map.len,
        .px = (uint8_t *)pool.buf,
        .dx = (struct desc *)dsc.buf,
        .fr = (const uint32_t *)frm.buf,
        .nf = frm.len / (Py_ssize_t)sizeof(uint32_t),
        .fs = fs,
        .hr = (uint32_t)hr,
        .room = (uint32_t)(fs - hr),
        .placed = 0,
        .pos = start,
        .truncated = 0,
        .why = STOP_FULL,
    };
    const uint64_t frames_in_pool = (uint64_t)pool.len / fs;
    const uint64_t frames_in_desc = (uint64_t)dsc.len / sizeof(struct desc);
    int bad_frame = 0;
    for (Py_ssize_t i = 0; i < w.nf; i++)
        if ((uint64_t)w.fr[i] >= frames_in_pool || (uint64_t)w.fr[i] >= frames_in_desc)
            bad_frame = 1;
    long long fault = -1;
    if (bad_frame || start > w.end) {
        PyErr_SetString(PyExc_ValueError, bad_frame ? "frame index outside the pool"
                                                    : "pos past the end of the mapping");
    } else {
        Py_BEGIN_ALLOW_THREADS
        guard_install();
        if (sigsetjmp(guard_env, 1) == 0) {
            guard_armed = 1;
            if (pcapng)
                walk_epb(&w, (const struct epb_fmt *)fmt);
            else
                walk_pcap(&w, (const struct pcap_fmt *)fmt);
            guard_armed = 0;
        } else {
            w.why = STOP_FAULT;
            fault = (long long)(guard_addr - w.m);
        }
        guard_remove();
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&frm);
    PyBuffer_Release(&dsc);
    PyBuffer_Release(&pool);
    PyBuffer_Release(&map);
    if (bad_frame || start > w.end)
        return NULL;
    return Py_BuildValue("(nKinL)", (Py_ssize_t)w.placed, (unsigned long long)w.pos, w.why,
                         (Py_ssize_t)w.truncated, fault);
}

/*
 * place(map, pos, pool, frame_size, headroom, desc, frames, big_endian, unit, maxcap,
 *       linktype) -> (placed, pos, why, truncated, fault)
 *
 * pcap records from `pos` (see run()); `unit` ns per sub-second (1000: microseconds),
 * `maxcap` the link type's largest caplen, `linktype` the file's (canonical).
 */
static PyObject *place(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 11) {
        PyErr_Format(PyExc_TypeError, "expected 11 arguments, got %zd", nargs);
        return NULL;
    }
    unsigned long long unit, maxcap, lt;
    if (get_u64(args[8], &unit) || get_u64(args[9], &maxcap) || get_u64(args[10], &lt))
        return NULL;
    int big = PyObject_IsTrue(args[7]);
    if (big < 0)
        return NULL;
    if (lt > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "bad link type");
        return NULL;
    }
    struct pcap_fmt f = {.big = big, .unit = unit, .maxcap = maxcap, .lt = (unsigned)lt};
    return run(args, 0, &f);
}

/*
 * place_epb(map, pos, pool, frame_size, headroom, desc, frames, big_endian, ifaces,
 *           max_block) -> (placed, pos, why, truncated, fault)
 *
 * pcapng Enhanced Packet Blocks of one section from `pos` (see run()); `ifaces` the
 * section's interfaces by id, an int64 buffer of IF_FIELDS per id (valid, link type,
 * largest caplen, timestamp units per second, if_tsoffset seconds); `max_block` the
 * section's largest block.  Any other block, and any EPB pcapng.py would call damaged
 * or whose time an int64 of ns cannot hold, stops the walk (STOP_JUDGE).
 */
static PyObject *place_epb(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "expected 10 arguments, got %zd", nargs);
        return NULL;
    }
    unsigned long long max_block;
    if (get_u64(args[9], &max_block))
        return NULL;
    int big = PyObject_IsTrue(args[7]);
    if (big < 0)
        return NULL;
    Py_buffer tab;
    if (PyObject_GetBuffer(args[8], &tab, PyBUF_SIMPLE) < 0)
        return NULL;
    struct epb_fmt f = {
        .big = big,
        .max_block = max_block,
        .ifaces = (const int64_t *)tab.buf,
        .n_ifaces = (uint64_t)tab.len / (IF_FIELDS * sizeof(int64_t)),
    };
    for (uint64_t i = 0; i < f.n_ifaces; i++) {
        const int64_t *it = f.ifaces + i * IF_FIELDS;
        if (it[IF_VALID] && (it[IF_UPS] <= 0 || it[IF_LINKTYPE] < 0 || it[IF_LINKTYPE] > 0xFFFF ||
                             it[IF_MAXCAP] < 0)) {
            PyBuffer_Release(&tab);
            PyErr_SetString(PyExc_ValueError, "bad interface table");
            return NULL;
        }
    }
    PyObject *r = run(args, 1, &f);
    PyBuffer_Release(&tab);
    return r;
}

/* hash(data, linktype) -> (hash, hash_type): frame_hash on its own, for the tests. */
static PyObject *hash(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "expected 2 arguments, got %zd", nargs);
        return NULL;
    }
    unsigned long long lt;
    if (get_u64(args[1], &lt))
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t hv = 0;
    int t = frame_hash((const uint8_t *)b.buf, (uint32_t)b.len, (unsigned)lt, &hv);
    PyBuffer_Release(&b);
    return Py_BuildValue("(Ii)", hv, t);
}

static PyMethodDef methods[] = {
    {"place", (PyCFunction)(void (*)(void))place, METH_FASTCALL,
     "place(map, pos, pool, frame_size, headroom, desc, frames, big_endian, unit, maxcap, "
     "linktype) -> (placed, pos, why, truncated, fault)"},
    {"place_epb", (PyCFunction)(void (*)(void))place_epb, METH_FASTCALL,
     "place_epb(map, pos, pool, frame_size, headroom, desc, frames, big_endian, ifaces, "
     "max_block) -> (placed, pos, why, truncated, fault)"},
    {"hash", (PyCFunction)(void (*)(void))hash, METH_FASTCALL,
     "hash(data, linktype) -> (hash, hash_type): Skb(data).hash as the place walk sets it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "cpumap._place",
    "A capture's records copied from its mapping into lent frames, SIGBUS-guarded.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__place(void)
{
    PyObject *mod = PyModule_Create(&moduledef);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddIntConstant(mod, "STOP_FULL", STOP_FULL) < 0 ||
        PyModule_AddIntConstant(mod, "STOP_END", STOP_END) < 0 ||
        PyModule_AddIntConstant(mod, "STOP_JUDGE", STOP_JUDGE) < 0 ||
        PyModule_AddIntConstant(mod, "STOP_FAULT", STOP_FAULT) < 0 ||
        PyModule_AddIntConstant(mod, "DESCRIPTOR_SIZE", (long)sizeof(struct desc)) < 0 ||
        PyModule_AddIntConstant(mod, "IF_FIELDS", IF_FIELDS) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
