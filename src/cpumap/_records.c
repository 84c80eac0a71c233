/*
 * cpumap._records: walking a pcap chunk's record headers.
 *
 * Why this is compiled (the package is Python first): where record i + 1 starts depends
 * on the length in record i's header, so the walk is a chain that no vectorized
 * operation can take in one call; in Python it is one struct.unpack_from and one
 * list.append per record, ~100 ns each.  On the main job (a 2 M-packet capture through
 * `cpumap run`) that loop was the largest single cost of the RX process after the copy
 * into the pool (benchmarks/bench_readers.py measures both walks; docs/performance.md).
 * Here it is a few ns per record.  Everything else about a record -- checking it,
 * gathering its fields -- stays numpy in capture/pcap.py, which also holds the Python
 * walk this one must equal (tests/capture/test_record_walk.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

/*
 * walk(buf, out, pos, big_endian) -> (n, pos)
 *
 * From byte `pos` of `buf`, while a record's caplen (bytes 8..11 of its 16-byte header)
 * lies inside `buf`: store the record's offset in out[n] (an int64 buffer) and move
 * `pos` past the record (16 + caplen).  Returns how many offsets were stored and the
 * position where the walk stopped: the first record whose caplen could not be read,
 * which may lie past the end of `buf` when the last stored record is incomplete -- as
 * the Python walk leaves it.  Stops early, with `out` full, if it has too few slots.
 */
static PyObject *walk(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "expected 4 arguments, got %zd", nargs);
        return NULL;
    }
    Py_buffer in, out;
    if (PyObject_GetBuffer(args[0], &in, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &out, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&in);
        return NULL;
    }
    long long start = PyLong_AsLongLong(args[2]);
    int big = PyObject_IsTrue(args[3]);
    if ((start == -1 && PyErr_Occurred()) || big < 0) {
        PyBuffer_Release(&out);
        PyBuffer_Release(&in);
        return NULL;
    }
    if (start < 0) {
        PyBuffer_Release(&out);
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "pos must be >= 0");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)in.buf;
    uint64_t end = (uint64_t)in.len;
    int64_t *o = (int64_t *)out.buf;
    Py_ssize_t cap = out.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t n = 0;
    uint64_t pos = (uint64_t)start;
    Py_BEGIN_ALLOW_THREADS
    while (n < cap && pos + 12 <= end) {
        const unsigned char *p = b + pos + 8;
        uint32_t caplen = big ? ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                                 (uint32_t)p[2] << 8 | (uint32_t)p[3])
                              : ((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 |
                                 (uint32_t)p[1] << 8 | (uint32_t)p[0]);
        o[n++] = (int64_t)pos;
        pos += 16 + (uint64_t)caplen;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&in);
    return Py_BuildValue("(nK)", n, (unsigned long long)pos);
}

static PyMethodDef methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
     "walk(buf, out, pos, big_endian) -> (n, pos): pcap record offsets into out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "cpumap._records",
    "Walking a pcap chunk's record headers: a chain Python takes one call per record.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__records(void)
{
    return PyModule_Create(&moduledef);
}
