# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The layer scan of :func:`unionfs.layertable.scan`, compiled: the same walk, system calls and
result (``LayerTable.state()``), without the Python bytecode around each ``lstat`` (which cost
~2x the system calls themselves).  ``layertable.scan_python`` is the reference it is tested against.
"""

from cpython.bytes cimport PyBytes_AS_STRING
from libc.errno cimport ERANGE, errno
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcmp, strlen

from ._buf cimport Buf, put, reserve, take

import os


cdef extern from "<fcntl.h>" nogil:
    int c_open "open"(const char *path, int flags)
    int O_RDONLY, O_DIRECTORY, O_CLOEXEC
    int AT_SYMLINK_NOFOLLOW

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<sys/stat.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    struct stat_t "stat":
        unsigned long st_dev
        unsigned long st_ino
        unsigned int st_mode
        unsigned long st_nlink
        unsigned int st_uid
        unsigned int st_gid
        unsigned long st_rdev
        long st_size
        long st_blocks
        timespec st_atim
        timespec st_mtim
        timespec st_ctim
    int fstatat(int dirfd, const char *path, stat_t *buf, int flags)
    unsigned int S_IFMT, S_IFDIR, S_IFCHR

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR
    struct dirent:
        char d_name[256]
    DIR *fdopendir(int fd)
    dirent *readdir(DIR *d)
    int closedir(DIR *d)

cdef extern from "<sys/xattr.h>" nogil:
    ssize_t flistxattr(int fd, char *buf, size_t size)
    ssize_t llistxattr(const char *path, char *buf, size_t size)
    ssize_t fgetxattr(int fd, const char *name, void *value, size_t size)
    ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)


cdef inline int put_u32(Buf *b, uint32_t v) except -1:
    return put(b, &v, 4)


cdef inline int64_t ns(timespec t) nogil:
    return <int64_t>t.tv_sec * 1000000000 + t.tv_nsec


cdef int dir_xattrs(int fd, const char *path) except -1:
    """1 if one of the opaque xattrs is set to "y" (whiteout.has_opaque_xattr), plus 2 if a redirect
    xattr is there; read through *fd* if >= 0."""
    cdef char names[4096]
    cdef char value[2]
    cdef ssize_t n, got
    cdef size_t off = 0
    cdef const char *name
    cdef int flags = 0
    n = flistxattr(fd, names, sizeof(names)) if fd >= 0 else llistxattr(path, names, sizeof(names))
    if n <= 0:
        return dir_xattrs_slow(path) if n < 0 and errno == ERANGE else 0  # ERANGE: more names than fit
    while off < <size_t>n:
        name = names + off
        if <bytes>name in OPAQUE_C:
            got = fgetxattr(fd, name, value, 2) if fd >= 0 else lgetxattr(path, name, value, 2)
            if got == 1 and value[0] == b"y":
                flags |= 1
        elif <bytes>name in REDIRECT_C:
            flags |= 2
        off += strlen(name) + 1
    return flags


cdef int dir_xattrs_slow(const char *path) except -1:
    return has_opaque_xattr(path) | (2 if read_redirect(path, b"/") is not None else 0)


from .whiteout import OPAQUE_NAME, OPAQUE_XATTRS, REDIRECT_XATTRS, WH_PREFIX, has_opaque_xattr, read_redirect

assert WH_PREFIX == b".wh."  # what the listing loop compares, in C

cdef frozenset OPAQUE_C = frozenset(OPAQUE_XATTRS)
cdef frozenset REDIRECT_C = frozenset(REDIRECT_XATTRS)
cdef bytes OPQ = OPAQUE_NAME[len(WH_PREFIX):]


def scan_state(bytes root):
    """``LayerTable.state()`` of the layer at *root*, read breadth first (directory 0 is the root)."""
    cdef Buf meta, sub, ino, start, count, first_sub, row_of
    cdef Buf sts  # the stat results of one directory
    cdef list names = []
    cdef list queue = [root]
    cdef bytearray opaque = bytearray()
    cdef dict whiteouts = {}
    cdef dict redirects = {}
    cdef Py_ssize_t d = 0, k, n, j
    cdef int fd, fmt
    cdef DIR *dirp
    cdef dirent *ent
    cdef stat_t *st
    cdef int64_t row[10]
    cdef int32_t s32
    cdef uint64_t u64
    cdef bint opq
    cdef int marks
    cdef bytes path, pre, name
    cdef list listed, wh, keep
    meta.data = sub.data = ino.data = start.data = count.data = first_sub.data = row_of.data = sts.data = NULL
    meta.len = sub.len = ino.len = start.len = count.len = first_sub.len = row_of.len = sts.len = 0
    meta.cap = sub.cap = ino.cap = start.cap = count.cap = first_sub.cap = row_of.cap = sts.cap = 0
    try:
        put_u32(&row_of, 0)
        while d < len(queue):
            path = queue[d]
            listed = []
            wh = []
            opq = False
            fd = c_open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            dirp = fdopendir(fd) if fd >= 0 else NULL
            if dirp == NULL and fd >= 0:
                close(fd)
                fd = -1
            try:
                if dirp != NULL:
                    while True:
                        ent = readdir(dirp)
                        if ent == NULL:
                            break
                        if ent.d_name[0] == b"." and (ent.d_name[1] == 0 or (ent.d_name[1] == b"." and ent.d_name[2] == 0)):
                            continue
                        name = ent.d_name
                        if memcmp(ent.d_name, b".wh.", 4) == 0:
                            wh.append(name[4:])
                        else:
                            listed.append(name)
                    if wh:
                        try:
                            wh.remove(OPQ)
                            opq = True
                        except ValueError:
                            pass
                listed.sort()
                n = len(listed)
                sts.len = 0
                reserve(&sts, n * sizeof(stat_t))
                st = <stat_t *>sts.data
                for k in range(n):
                    if fstatat(fd, PyBytes_AS_STRING(listed[k]), &st[k], AT_SYMLINK_NOFOLLOW) != 0:
                        e = errno
                        raise OSError(e, os.strerror(e), path + b"/" + listed[k])
                keep = None
                for k in range(n):
                    if st[k].st_mode & S_IFMT == S_IFCHR and st[k].st_rdev == 0:  # kernel-form whiteout
                        if keep is None:
                            keep = list(range(k))
                        wh.append(listed[k])
                    elif keep is not None:
                        keep.append(k)
                marks = dir_xattrs(fd, path)
                opq = opq or (marks & 1)
                if marks & 2:
                    target = read_redirect(path, path[len(root):] or b"/")
                    if target is not None:
                        redirects[d] = target
            finally:
                if dirp != NULL:
                    closedir(dirp)
            put_u32(&start, len(names))
            put_u32(&first_sub, len(queue))
            opaque.append(opq)
            if wh:
                whiteouts[d] = wh
            pre = path + b"/"
            j = len(names)
            for k in (keep if keep is not None else range(n)):
                fmt = st[k].st_mode & S_IFMT
                name = listed[k]
                names.append(name)
                if fmt == S_IFDIR:
                    s32 = len(queue)
                    put_u32(&row_of, j)
                    queue.append(pre + name)
                else:
                    s32 = -1
                put(&sub, &s32, 4)
                row[0] = st[k].st_mode
                row[1] = st[k].st_nlink
                row[2] = st[k].st_uid
                row[3] = st[k].st_gid
                row[4] = st[k].st_rdev
                row[5] = st[k].st_size
                row[6] = ns(st[k].st_atim)
                row[7] = ns(st[k].st_mtim)
                row[8] = ns(st[k].st_ctim)
                row[9] = st[k].st_blocks
                put(&meta, row, sizeof(row))
                u64 = st[k].st_ino if st[k].st_nlink > 1 and fmt != S_IFDIR else 0
                put(&ino, &u64, 8)
                j += 1
            put_u32(&count, j - (<uint32_t *>start.data)[d])
            d += 1
        put_u32(&first_sub, len(queue))
        return (
            names,
            take(&meta),
            take(&sub),
            take(&ino),
            take(&start),
            take(&count),
            take(&first_sub),
            take(&row_of),
            bytes(opaque),
            whiteouts,
            redirects,
        )
    finally:
        free(meta.data); free(sub.data); free(ino.data); free(start.data)
        free(count.data); free(first_sub.data); free(row_of.data); free(sts.data)
