# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The merge of layer tables and the lookup table of :func:`unionfs.index.build_index`, compiled:
the same algorithm and result as ``index.merge_python`` and ``index.hash_table_python`` (their
tested references), without the bytecode run for every directory each layer has (which made deep
stacks cost ~40 us per layer)."""

from array import array

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from ._buf cimport Buf, put, reserve, take

import xxhash

cdef object _xxh = xxhash.xxh64_intdigest

cdef enum:
    META_BYTES = 80
    LINK_W = 5
    ROW_BITS = 32


cdef struct Tab:  # one layer table's columns (see unionfs.layertable)
    const char *meta
    const int32_t *sub
    const uint64_t *ino
    const uint32_t *start
    const uint32_t *count
    const uint32_t *first_sub
    const uint32_t *row_of
    const char *opaque


cdef inline int put3(Buf *b, uint32_t x, uint32_t y, uint32_t z) except -1:
    cdef uint32_t v[3]
    v[0] = x
    v[1] = y
    v[2] = z
    return put(b, v, 12)


cdef inline int put_link(Buf *b, uint32_t parent, uint32_t layer, uint32_t entry) except -1:
    cdef uint32_t v[LINK_W]
    v[0] = parent
    v[1] = layer
    v[2] = entry  # canon: the entry itself until hard links are resolved
    v[3] = 0
    v[4] = 0
    return put(b, v, sizeof(v))


cdef object to_array(str code, Buf *b):
    out = array(code)
    out.frombytes(take(b))
    return out


def merge(list tables, bytes root_meta):
    """See ``unionfs.index.merge_python``."""
    cdef Py_ssize_t nt = len(tables), k, i, c, nc, qi, rows, dirs
    cdef Tab *tabs = <Tab *>calloc(nt or 1, sizeof(Tab))
    cdef Py_buffer *views = <Py_buffer *>calloc(7 * nt or 1, sizeof(Py_buffer))
    cdef Py_ssize_t nviews = 0
    cdef Buf meta, links, queue, pool  # queue: (entry, pool offset, contributors); pool: (layer, dir)
    cdef uint32_t entry, off, ncon, d, s, e, j, sd, first, kk
    cdef uint32_t *q
    cdef uint32_t *con
    cdef Tab *t
    cdef uint64_t v
    cdef PyObject *found
    cdef list names = [b""], hard_rows = [], tnames, keys, chain
    cdef dict winner, chains, wh
    cdef object name
    if tabs == NULL or views == NULL:
        free(tabs)
        free(views)
        raise MemoryError()
    meta.data = links.data = queue.data = pool.data = NULL
    meta.len = links.len = queue.len = pool.len = 0
    meta.cap = links.cap = queue.cap = pool.cap = 0
    all_names = [tb.names for tb in tables]
    all_wh = [tb.whiteouts for tb in tables]
    try:
        for k in range(nt):
            tb = tables[k]
            for col in (tb.meta, tb.sub, tb.ino, tb.start, tb.count, tb.first_sub, tb.row_of):
                PyObject_GetBuffer(col, &views[nviews], PyBUF_SIMPLE)
                nviews += 1
            tabs[k].meta = <const char *>views[nviews - 7].buf
            tabs[k].sub = <const int32_t *>views[nviews - 6].buf
            tabs[k].ino = <const uint64_t *>views[nviews - 5].buf
            tabs[k].start = <const uint32_t *>views[nviews - 4].buf
            tabs[k].count = <const uint32_t *>views[nviews - 3].buf
            tabs[k].first_sub = <const uint32_t *>views[nviews - 2].buf
            tabs[k].row_of = <const uint32_t *>views[nviews - 1].buf
            tabs[k].opaque = PyBytes_AS_STRING(tb.opaque)
            rows = len(tb.names)
            dirs = len(tb.opaque)
            if not (
                views[nviews - 7].len == rows * META_BYTES and views[nviews - 6].len == rows * 4
                and views[nviews - 5].len == rows * 8 and views[nviews - 4].len == dirs * 4
                and views[nviews - 3].len == dirs * 4 and views[nviews - 2].len == (dirs + 1) * 4
                and views[nviews - 1].len == dirs * 4
            ):  # the columns are read unchecked below
                raise ValueError(f"layer table {k}: columns of inconsistent lengths")
        put(&meta, PyBytes_AS_STRING(root_meta), PyBytes_GET_SIZE(root_meta))
        put_link(&links, 0, 0, 0)
        if nt:
            put3(&queue, 0, 0, nt)
            for k in range(nt):
                put3(&pool, k, 0, 0)  # (layer, dir) pairs, padded to the queue's stride
        qi = 0
        while qi * 12 < <Py_ssize_t>queue.len:  # grows while walked: breadth-first order
            q = <uint32_t *>queue.data + 3 * qi
            entry, off, ncon = q[0], q[1], q[2]
            qi += 1
            first = len(names)
            con = <uint32_t *>pool.data + 3 * off
            if ncon == 1:  # a directory only one layer has: its rows as a block
                kk, d = con[0], con[1]
                t = &tabs[kk]
                s = t.start[d]
                c = t.count[d]
                names.extend((<list>all_names[kk])[s : s + c])
                put(&meta, t.meta + s * META_BYTES, c * META_BYTES)
                for i in range(c):
                    put_link(&links, entry, kk, first + i)
                for sd in range(t.first_sub[d], t.first_sub[d + 1]):
                    put3(&queue, t.row_of[sd] - s + first, pool.len // 12, 1)
                    put3(&pool, kk, sd, 0)
                for j in range(s, s + c):
                    if t.ino[j]:
                        hard_rows.append((j - s + first, t.ino[j]))
            else:
                nc = ncon
                for i in range(ncon):  # nothing below an opaque directory shows
                    if tabs[con[3 * i]].opaque[con[3 * i + 1]]:
                        nc = i + 1
                        break
                # bottom layer up: whiteouts remove what is below them, then the layer's entries
                # override; a subdirectory continues the chain of the same name below only if that
                # is a directory
                winner = {}  # name -> layer << 32 | row
                chains = {}  # name -> its contributors (layer << 32 | dir), bottom first
                for i in range(nc - 1, -1, -1):
                    kk, d = con[3 * i], con[3 * i + 1]
                    t = &tabs[kk]
                    wh = all_wh[kk]
                    if wh:
                        for x in wh.get(d, ()):
                            winner.pop(x, None)
                    tnames = all_names[kk]
                    for sd in range(t.first_sub[d], t.first_sub[d + 1]):
                        name = <object>PyList_GET_ITEM(tnames, t.row_of[sd])
                        found = PyDict_GetItem(winner, name)
                        if found != NULL:
                            v = <object>found
                            if tabs[v >> ROW_BITS].sub[v & 0xFFFFFFFF] >= 0:
                                (<list>chains[name]).append((<uint64_t>kk << ROW_BITS) | sd)
                                continue
                        chains[name] = [(<uint64_t>kk << ROW_BITS) | sd]
                    s = t.start[d]
                    e = s + t.count[d]
                    for j in range(s, e):
                        PyDict_SetItem(winner, <object>PyList_GET_ITEM(tnames, j), (<uint64_t>kk << ROW_BITS) | j)
                keys = sorted(winner)
                c = len(keys)
                names.extend(keys)
                reserve(&meta, c * META_BYTES)
                for i in range(c):
                    name = keys[i]
                    v = <object>PyDict_GetItem(winner, name)
                    kk = v >> ROW_BITS
                    j = v & 0xFFFFFFFF
                    t = &tabs[kk]
                    put(&meta, t.meta + j * META_BYTES, META_BYTES)
                    put_link(&links, entry, kk, first + i)
                    if t.sub[j] >= 0:
                        chain = chains[name]
                        put3(&queue, first + i, pool.len // 12, len(chain))
                        for x in reversed(chain):
                            v = x
                            put3(&pool, v >> ROW_BITS, v & 0xFFFFFFFF, 0)
                    elif t.ino[j]:
                        hard_rows.append((first + i, t.ino[j]))
            q = <uint32_t *>links.data + LINK_W * entry
            q[3] = first
            q[4] = c
        return names, to_array("q", &meta), to_array("I", &links), hard_rows
    finally:
        for i in range(nviews):
            PyBuffer_Release(&views[i])
        free(views)
        free(tabs)
        free(meta.data)
        free(links.data)
        free(queue.data)
        free(pool.data)


def hash_table(list names, links, Py_ssize_t size):
    """See ``unionfs.index.hash_table_python``."""
    cdef Py_ssize_t n = len(names), i
    cdef uint64_t mask = size - 1, slot
    cdef Py_buffer lv, tv
    cdef const uint32_t *lk
    cdef uint32_t *tab
    cdef bytes key, name
    cdef char *kp
    cdef uint32_t parent
    table = array("I", bytes(4 * size))
    PyObject_GetBuffer(links, &lv, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(table, &tv, PyBUF_WRITABLE)
        try:
            lk = <const uint32_t *>lv.buf
            tab = <uint32_t *>tv.buf
            for i in range(1, n):  # entry 0 (the root) is never looked up by name
                name = <bytes>PyList_GET_ITEM(names, i)
                key = PyBytes_FromStringAndSize(NULL, 4 + PyBytes_GET_SIZE(name))
                kp = PyBytes_AS_STRING(key)
                parent = lk[i * LINK_W]
                kp[0] = parent & 0xFF  # little-endian, as index._le32
                kp[1] = (parent >> 8) & 0xFF
                kp[2] = (parent >> 16) & 0xFF
                kp[3] = parent >> 24
                memcpy(kp + 4, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
                slot = <uint64_t>_xxh(key) & mask
                while tab[slot]:
                    slot = (slot + 1) & mask
                tab[slot] = i + 1
        finally:
            PyBuffer_Release(&tv)
    finally:
        PyBuffer_Release(&lv)
    return table
