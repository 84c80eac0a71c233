/*
 * cpumap._atomics: the few primitives Python cannot express.
 *
 * Why this file exists (with _records.c, the package's only compiled code):
 *   - Python has no memory fence.  x86 keeps stores in order and loads in
 *     order, but may let a load pass an earlier store (store buffering).  The
 *     sleep/wake protocol ("set sleeping, then re-check the ring" against
 *     "publish, then check sleeping") and the grace-period protocol are both
 *     Dekker-style and are wrong without a full fence between the store and
 *     the load.  store_fence_load() below is that store + full fence + load.
 *   - Python has no compare-and-swap: the ring's producer lock needs one.
 *   - Python has no futex: sleeping on a word in shared memory and being woken
 *     by another process needs FUTEX_WAIT / FUTEX_WAKE (non-private: the word
 *     lives in a MAP_SHARED mapping used by several processes).
 *
 * Every function takes a raw address (an int) rather than a buffer object:
 * parsing a buffer costs more than the operation itself.  The Python side
 * (cpumap.shm) owns the mapping and guarantees it outlives every address it
 * hands out.  All words must be naturally aligned.
 *
 * Calls use METH_FASTCALL: one call costs ~50 ns, against ~2 us for the
 * smallest numpy operation.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int get_addr(PyObject *o, void **out)
{
    unsigned long long a = PyLong_AsUnsignedLongLong(o);
    if (a == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (a == 0) {
        PyErr_SetString(PyExc_ValueError, "null address");
        return -1;
    }
    *out = (void *)(uintptr_t)a;
    return 0;
}

static int get_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

#define CHECK_NARGS(n)                                                        \
    if (nargs != (n)) {                                                       \
        PyErr_Format(PyExc_TypeError, "expected %d arguments, got %zd", (n), \
                     nargs);                                                  \
        return NULL;                                                          \
    }

/* load_u64(addr) -> int, acquire */
static PyObject *load_u64(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    CHECK_NARGS(1);
    if (get_addr(args[0], &p) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(
        atomic_load_explicit((_Atomic uint64_t *)p, memory_order_acquire));
}

/* load_u32(addr) -> int, acquire */
static PyObject *load_u32(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    CHECK_NARGS(1);
    if (get_addr(args[0], &p) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(
        atomic_load_explicit((_Atomic uint32_t *)p, memory_order_acquire));
}

/* store_u64(addr, value), release */
static PyObject *store_u64(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    uint64_t v;
    CHECK_NARGS(2);
    if (get_addr(args[0], &p) < 0 || get_u64(args[1], &v) < 0)
        return NULL;
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_release);
    Py_RETURN_NONE;
}

/* store_u32(addr, value), release */
static PyObject *store_u32(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    uint64_t v;
    CHECK_NARGS(2);
    if (get_addr(args[0], &p) < 0 || get_u64(args[1], &v) < 0)
        return NULL;
    atomic_store_explicit((_Atomic uint32_t *)p, (uint32_t)v, memory_order_release);
    Py_RETURN_NONE;
}

/* fetch_add_u64(addr, delta) -> old value, sequentially consistent */
static PyObject *fetch_add_u64(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    uint64_t v;
    CHECK_NARGS(2);
    if (get_addr(args[0], &p) < 0 || get_u64(args[1], &v) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(atomic_fetch_add((_Atomic uint64_t *)p, v));
}

/* fetch_add_u32(addr, delta) -> old value, sequentially consistent */
static PyObject *fetch_add_u32(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    uint64_t v;
    CHECK_NARGS(2);
    if (get_addr(args[0], &p) < 0 || get_u64(args[1], &v) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(atomic_fetch_add((_Atomic uint32_t *)p, (uint32_t)v));
}

/* cas_u32(addr, expected, desired) -> bool, sequentially consistent */
static PyObject *cas_u32(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    uint64_t e, d;
    CHECK_NARGS(3);
    if (get_addr(args[0], &p) < 0 || get_u64(args[1], &e) < 0 || get_u64(args[2], &d) < 0)
        return NULL;
    uint32_t expected = (uint32_t)e;
    if (atomic_compare_exchange_strong((_Atomic uint32_t *)p, &expected, (uint32_t)d))
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

/* fence(): full (sequentially consistent) memory fence */
static PyObject *fence(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CHECK_NARGS(0);
    atomic_thread_fence(memory_order_seq_cst);
    Py_RETURN_NONE;
}

/*
 * store_fence_load(store_addr, value, load_addr) -> int
 *
 * Stores the u64 `value` at store_addr, issues a full fence, then loads the
 * u32 at load_addr.  This is one side of a Dekker handshake: if two parties
 * each do store_fence_load on (their word, the other's word), at least one of
 * them sees the other's store.  Without the fence x86 may satisfy the load
 * from before the store is visible (store buffering), and both miss.
 */
static PyObject *store_fence_load(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *s, *l;
    uint64_t v;
    CHECK_NARGS(3);
    if (get_addr(args[0], &s) < 0 || get_u64(args[1], &v) < 0 || get_addr(args[2], &l) < 0)
        return NULL;
    atomic_store_explicit((_Atomic uint64_t *)s, v, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    return PyLong_FromUnsignedLong(atomic_load_explicit((_Atomic uint32_t *)l, memory_order_seq_cst));
}

/*
 * store32_fence_load64(store_addr, value, load_addr) -> int
 *
 * The mirror of store_fence_load: stores the u32 `value`, full fence, loads
 * a u64.  The consumer side of the sleep handshake uses it (store its
 * "sleeping" flag, then re-read the producer's tail).
 */
static PyObject *store32_fence_load64(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *s, *l;
    uint64_t v;
    CHECK_NARGS(3);
    if (get_addr(args[0], &s) < 0 || get_u64(args[1], &v) < 0 || get_addr(args[2], &l) < 0)
        return NULL;
    atomic_store_explicit((_Atomic uint32_t *)s, (uint32_t)v, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    return PyLong_FromUnsignedLongLong(atomic_load_explicit((_Atomic uint64_t *)l, memory_order_seq_cst));
}

/*
 * futex_wait(addr, expected, timeout_s) -> int
 *
 * Sleeps while the u32 at addr equals `expected`, at most timeout_s seconds
 * (a float; negative means no limit).  Returns 0 when woken (or on a spurious
 * wake-up), 1 when the word already differed (EAGAIN), 2 on timeout, 3 when a
 * signal interrupted the wait.  The GIL is released while sleeping.
 * Callers always re-check their condition: a futex wake-up is only a hint.
 */
static PyObject *futex_wait(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    uint64_t e;
    CHECK_NARGS(3);
    if (get_addr(args[0], &p) < 0 || get_u64(args[1], &e) < 0)
        return NULL;
    double t = PyFloat_AsDouble(args[2]);
    if (t == -1.0 && PyErr_Occurred())
        return NULL;
    struct timespec ts, *tsp = NULL;
    if (t >= 0) {
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        tsp = &ts;
    }
    long rc;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, (uint32_t *)p, FUTEX_WAIT, (uint32_t)e, tsp, NULL, 0);
    if (rc < 0)
        err = errno;
    Py_END_ALLOW_THREADS
    if (rc == 0)
        return PyLong_FromLong(0);
    switch (err) {
    case EAGAIN:
        return PyLong_FromLong(1);
    case ETIMEDOUT:
        return PyLong_FromLong(2);
    case EINTR:
        return PyLong_FromLong(3);
    default:
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

/* futex_wake(addr, n) -> number of waiters woken */
static PyObject *futex_wake(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    void *p;
    uint64_t n;
    CHECK_NARGS(2);
    if (get_addr(args[0], &p) < 0 || get_u64(args[1], &n) < 0)
        return NULL;
    long rc = syscall(SYS_futex, (uint32_t *)p, FUTEX_WAKE, (int)n, NULL, NULL, 0);
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(rc);
}

/* set_pdeathsig(sig): deliver `sig` to this process when its parent exits. */
static PyObject *set_pdeathsig(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CHECK_NARGS(1);
    long sig = PyLong_AsLong(args[0]);
    if (sig == -1 && PyErr_Occurred())
        return NULL;
    if (prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"load_u64", (PyCFunction)(void (*)(void))load_u64, METH_FASTCALL, "load_u64(addr) -> int (acquire)"},
    {"load_u32", (PyCFunction)(void (*)(void))load_u32, METH_FASTCALL, "load_u32(addr) -> int (acquire)"},
    {"store_u64", (PyCFunction)(void (*)(void))store_u64, METH_FASTCALL, "store_u64(addr, v) (release)"},
    {"store_u32", (PyCFunction)(void (*)(void))store_u32, METH_FASTCALL, "store_u32(addr, v) (release)"},
    {"fetch_add_u64", (PyCFunction)(void (*)(void))fetch_add_u64, METH_FASTCALL, "fetch_add_u64(addr, d) -> old"},
    {"fetch_add_u32", (PyCFunction)(void (*)(void))fetch_add_u32, METH_FASTCALL, "fetch_add_u32(addr, d) -> old"},
    {"cas_u32", (PyCFunction)(void (*)(void))cas_u32, METH_FASTCALL, "cas_u32(addr, expected, desired) -> bool"},
    {"fence", (PyCFunction)(void (*)(void))fence, METH_FASTCALL, "fence(): full memory fence"},
    {"store_fence_load", (PyCFunction)(void (*)(void))store_fence_load, METH_FASTCALL,
     "store_fence_load(store_addr, u64, load_addr) -> u32: store, full fence, load"},
    {"store32_fence_load64", (PyCFunction)(void (*)(void))store32_fence_load64, METH_FASTCALL,
     "store32_fence_load64(store_addr, u32, load_addr) -> u64: store, full fence, load"},
    {"futex_wait", (PyCFunction)(void (*)(void))futex_wait, METH_FASTCALL,
     "futex_wait(addr, expected, timeout_s) -> 0 woken, 1 changed, 2 timeout, 3 signal"},
    {"futex_wake", (PyCFunction)(void (*)(void))futex_wake, METH_FASTCALL, "futex_wake(addr, n) -> woken"},
    {"set_pdeathsig", (PyCFunction)(void (*)(void))set_pdeathsig, METH_FASTCALL,
     "set_pdeathsig(sig): signal this process when its parent dies"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "cpumap._atomics",
    "Fences, atomics and futex on shared memory: the primitives Python lacks.", -1, methods,
};

PyMODINIT_FUNC PyInit__atomics(void)
{
    return PyModule_Create(&moduledef);
}
