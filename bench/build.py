"""Build-cache benchmark: what a rebuild of an unchanged 10-step Dockerfile costs beyond the
interpreter's start-up (issue #16: well under a second), next to buildah's cached rebuild.

    python -m bench.build [--repeat 5]

Builds once (FROM scratch, COPY of a 200-file context, ENV, LABEL, WORKDIR, EXPOSE, …), then times
the rebuild R times, and `strata images` (start-up and one store read) as the baseline; buildah
bud --layers on the same Dockerfile, rebuilt the same way, if it is installed.  Medians in ms.
No assertions.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATA = str(REPO / ".venv" / "bin" / "strata")
DOCKERFILE = """FROM scratch
COPY files /files
ENV A=1 B=2
LABEL k=v
WORKDIR /srv
COPY files/f000 /srv/one
EXPOSE 80
USER 1000
ENTRYPOINT ["/bin/app"]
CMD ["--help"]
"""


def _ms(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="strata-bench-build-") as tmp:
        t = Path(tmp)
        ctx = t / "ctx"
        (ctx / "files").mkdir(parents=True)
        for i in range(200):
            (ctx / "files" / f"f{i:03}").write_text(f"file {i}\n" * 20)
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        store = ["--root", str(t / "store")]
        first = _ms([STRATA, *store, "build", "-q", "-t", "b:1", str(ctx)], 1)
        cached = _ms([STRATA, *store, "build", "-q", "-t", "b:1", str(ctx)], args.repeat)
        baseline = _ms([STRATA, *store, "images"], args.repeat)
        print(f"strata  first build {first:7.0f} ms   cached rebuild {cached:6.0f} ms   `images` {baseline:5.0f} ms")
        print(f"        cached rebuild beyond start-up: {cached - baseline:.0f} ms (goal: well under 1000)")
        if shutil.which("buildah"):
            b = ["buildah", "--root", str(t / "bh"), "--runroot", str(t / "bhr"), "--storage-driver", "vfs"]
            bud = [*b, "bud", "--layers", "-q", "-t", "b", str(ctx)]
            first_b = _ms(bud, 1)
            cached_b = _ms(bud, args.repeat)
            print(f"buildah first build {first_b:7.0f} ms   cached rebuild {cached_b:6.0f} ms")
            print(f"ratio strata/buildah, cached rebuild: {cached / cached_b:.2f}")


if __name__ == "__main__":
    main()
