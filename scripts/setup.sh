#!/usr/bin/env bash
# Set up everything strata needs on a Debian machine (idempotent): system packages and .venv/.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc patch python3 python3-venv python3-dev
              skopeo umoci fuse-overlayfs docker-registry jq zstd attr curl openssl tar gzip podman buildah crun runc
              autoconf automake libtool make perl  # (these five build and run pjdfstest)
              meson ninja-build  # (they build libfuse 3.17 for FUSE passthrough)
              strace  # (its fault injection kills commands at each system call in the tests)
              xz-utils bzip2)  # (archives compressed by the real tools in the tests)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
modprobe fuse 2>/dev/null || true
modprobe overlay 2>/dev/null || true

# Debian's own interpreter, the one users have: not a newer one that happens to be first on PATH
PYTHON=${PYTHON:-/usr/bin/python3}
pyver() { "$1" -c 'import sys; print(sys.version.split()[0])'; }
if [ -x .venv/bin/python ] && [ "$(pyver .venv/bin/python)" != "$(pyver "$PYTHON")" ]; then
    echo "setup: .venv runs Python $(pyver .venv/bin/python), not $PYTHON's $(pyver "$PYTHON"): making it again" >&2
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# mount(8) runs `mount -t fuse.strata-overlay` helpers from a fixed PATH: make ours findable there.
if [ "$(id -u)" -eq 0 ] && [ -d /usr/local/bin ]; then
    ln -sfn "$PWD/.venv/bin/strata-overlay" /usr/local/bin/strata-overlay
fi
# FUSE passthrough (the kernel serving file data itself) needs libfuse >= 3.16; Debian 12 has 3.14.
# Build Debian 13's libfuse 3.17.2 from its source package into .venv/libfuse (its binary packages
# need a newer glibc). Where that source cannot be had, pyfuse3 builds on the system's libfuse and
# strata runs without passthrough.
LIBFUSE=3.17.2
LIBFUSE_DIR=$PWD/.venv/libfuse
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
if [ ! -f "$LIBFUSE_DIR/lib/pkgconfig/fuse3.pc" ] || ! grep -q "Version: $LIBFUSE" "$LIBFUSE_DIR/lib/pkgconfig/fuse3.pc"; then
    echo "setup: building libfuse $LIBFUSE from Debian's source package" >&2
    mkdir -p "$build/lists/partial" "$build/src"
    # the Debian mirror that this machine's own apt sources name (its main archive, not security)
    mirror=$(grep -hoE '^(URIs:|deb)[[:space:]]+[^[:space:]]+' /etc/apt/sources.list.d/*.sources \
                 /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    echo "deb-src $mirror trixie main" > "$build/sources.list"
    apt_src=(-o Dir::Etc::sourcelist="$build/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$build/lists")
    if apt-get -qq "${apt_src[@]}" update >/dev/null 2>&1 \
        && (cd "$build/src" && apt-get -qq "${apt_src[@]}" source --download-only fuse3 >/dev/null 2>&1) \
        && tar -xzf "$build/src/fuse3_$LIBFUSE.orig.tar.gz" -C "$build" \
        && meson setup "$build/fuse-build" "$build/fuse-$LIBFUSE" --prefix="$LIBFUSE_DIR" --libdir=lib \
            -Dexamples=false -Dutils=false -Dtests=false -Ddisable-mtab=true >/dev/null \
        && ninja -C "$build/fuse-build" install >/dev/null; then
        rm -f .venv/.pyfuse3-libfuse
    else
        echo "setup: libfuse $LIBFUSE could not be built: strata runs without FUSE passthrough" >&2
        rm -rf "$LIBFUSE_DIR"
    fi
fi
# pyfuse3 (built from source on every install anyway) gets small additions strata needs:
# fallocate(2), kernel-cached listings, skipped opens, passthrough, plain readdir. See scripts/pyfuse3.patch.
PYFUSE3=3.5.0
built_on=system; [ -f "$LIBFUSE_DIR/lib/pkgconfig/fuse3.pc" ] && built_on=$LIBFUSE
if ! .venv/bin/python -c 'import pyfuse3, sys; sys.exit(getattr(pyfuse3, "STRATA_PATCH_LEVEL", 0) < 5)' 2>/dev/null \
    || [ "$(cat .venv/.pyfuse3-libfuse 2>/dev/null)" != "$built_on" ]; then
    echo "setup: building pyfuse3 $PYFUSE3 with scripts/pyfuse3.patch on libfuse $built_on" >&2
    .venv/bin/python -m pip download -q --no-deps --no-binary pyfuse3 "pyfuse3==$PYFUSE3" -d "$build"
    tar -xzf "$build/pyfuse3-$PYFUSE3.tar.gz" -C "$build"
    patch -s -p1 -d "$build/pyfuse3-$PYFUSE3" < scripts/pyfuse3.patch
    rm -f "$build/pyfuse3-$PYFUSE3/src/pyfuse3/__init__.c"  # generated from the unpatched sources
    libfuse_env=()  # (-L first: Python's own -L of the system's library dir would find libfuse 3.14)
    [ "$built_on" = system ] || libfuse_env=(PKG_CONFIG_PATH="$LIBFUSE_DIR/lib/pkgconfig"
                                             LDFLAGS="-L$LIBFUSE_DIR/lib -Wl,-rpath,$LIBFUSE_DIR/lib")
    env "${libfuse_env[@]}" .venv/bin/python -m pip install -q "$build/pyfuse3-$PYFUSE3"
    echo "$built_on" > .venv/.pyfuse3-libfuse
fi
stamp=.venv/.strata-installed
# (the install also compiles unionfs/*.pyx, the index builder's hot loops, in place)
stale=0
for f in pyproject.toml setup.py unionfs/*.pyx unionfs/*.pxd; do [ "$f" -nt "$stamp" ] && stale=1; done
grep -qs "import __editable__" .venv/lib/python3*/site-packages/__editable__.strata-*.pth && stale=1  # (the finder)
if [ ! -f "$stamp" ] || [ "$stale" = 1 ] || ! ls unionfs/_scan.*.so unionfs/_merge.*.so >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # "compat": the checkout as a plain path in a .pth; the default editable finder costs ~11 ms of
    # every process start (each strata-overlay mount). setuptools calls the mode transitional.
    .venv/bin/python -m pip install -q --config-settings editable_mode=compat -e '.[test,plot]' 2>/dev/null ||
        .venv/bin/python -m pip install -q -e '.[test,plot]'
    touch "$stamp"
fi
# byte-compile the sources (an editable install does not): where PYTHONDONTWRITEBYTECODE is set,
# every strata-overlay start would compile unionfs/ and cli/ again, ~20 ms of each mount
.venv/bin/python -m compileall -q unionfs cli store >/dev/null || true
