# cython: language_level=3
"""A growable byte buffer, shared by the compiled parts of the index builder."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy


cdef struct Buf:
    char *data
    size_t len
    size_t cap


cdef inline int reserve(Buf *b, size_t extra) except -1:
    """Room for *extra* more bytes (capacity doubles)."""
    cdef size_t cap = b.cap or 4096
    cdef char *p
    while cap < b.len + extra:
        cap *= 2
    if cap != b.cap:
        p = <char *>realloc(b.data, cap)
        if p == NULL:
            raise MemoryError()
        b.data = p
        b.cap = cap
    return 0


cdef inline int put(Buf *b, const void *src, size_t n) except -1:
    if b.len + n > b.cap:
        reserve(b, n)
    memcpy(b.data + b.len, src, n)
    b.len += n
    return 0


cdef inline bytes take(Buf *b):
    """The buffer's bytes; the buffer is freed (and empty)."""
    out = PyBytes_FromStringAndSize(b.data, b.len) if b.len else b""
    free(b.data)
    b.data = NULL
    b.len = b.cap = 0
    return out
