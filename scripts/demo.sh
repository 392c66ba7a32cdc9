#!/usr/bin/env bash
# Set everything up, then walk through strata offline on a sample image it builds itself:
# import → save/load → images → inspect → history → create → mount → browse → change → diff → commit
# → history → build (a Dockerfile over the committed image) → run → a cached rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

DEMO=${STRATA_DEMO_DIR:-/tmp/strata-demo}
export STRATA_ROOT="$DEMO/store"
strata() { .venv/bin/strata "$@"; }
say() {  # show the command as a user would type it, then run it
    local shown="\$ strata" a
    for a in "$@"; do
        case "$a" in *[[:space:]\"\<\>\[\]\{\}]*) shown+=" '$a'" ;; *) shown+=" $a" ;; esac
    done
    printf '\n\033[1m%s\033[0m\n' "$shown"
    strata "$@"
}
MNT="$DEMO/mnt"

cleanup() {
    mountpoint -q "$MNT" 2>/dev/null && strata umount "$MNT" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$DEMO" && mkdir -p "$DEMO/rootfs" "$MNT"

# A tiny sample rootfs (users have no ../shared; the demo makes its own image).
R="$DEMO/rootfs"
mkdir -p "$R/etc" "$R/bin" "$R/srv/www" "$R/tmp"
printf 'NAME="strata sample"\nID=sample\n' > "$R/etc/os-release"
echo sample > "$R/etc/hostname"
printf '#!/bin/sh\necho "hello from the sample image"\n' > "$R/bin/hello"
chmod 0755 "$R/bin/hello"; chmod 1777 "$R/tmp"
echo '<h1>it works</h1>' > "$R/srv/www/index.html"
ln -s ../etc/hostname "$R/srv/hostname-link"
# a shell, for RUN and run: the machine's dash and the libraries it links
for f in /bin/dash $(ldd /bin/dash | grep -o '/[^ ]*'); do
    mkdir -p "$R$(dirname "$f")"; cp -L "$f" "$R$f"
done
ln -sf dash "$R/bin/sh"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
mkdir -p "$R/proc" "$R/sys" "$R/dev"
tar --numeric-owner --owner=0 --group=0 -czf "$DEMO/rootfs.tar.gz" -C "$R" .

say import -m "sample rootfs" -c 'CMD ["/bin/hello"]' -c "ENV DEMO=1" "$DEMO/rootfs.tar.gz" demo/sample:1.0
say save -o "$DEMO/sample.tar" demo/sample:1.0
say rmi demo/sample:1.0
say load -i "$DEMO/sample.tar"
say images
say inspect --format '{{.Id}} {{json .Config.Cmd}} {{.Os}}/{{.Architecture}}' demo/sample:1.0
say history demo/sample:1.0

say create --name demo demo/sample:1.0
say mount demo "$MNT"
say ps
printf '\n\033[1m$ ls -la %s/srv/www; cat %s/etc/os-release\033[0m\n' "$MNT" "$MNT"
ls -la "$MNT/srv/www"; cat "$MNT/etc/os-release"
printf '\n\033[1m# change: edit a file, add one, delete one\033[0m\n'
echo "changed in the container" > "$MNT/etc/hostname"
echo '<p>new page</p>' > "$MNT/srv/www/new.html"
rm "$MNT/srv/hostname-link"
say diff demo
say umount demo
say commit -a "demo <demo@example.com>" -m "edit hostname, add a page" -c "ENV DEMO=2" demo demo/sample:1.1
say history demo/sample:1.1
say images

mkdir -p "$DEMO/ctx"
echo '<p>copied by the build</p>' > "$DEMO/ctx/about.html"
cat > "$DEMO/ctx/Dockerfile" <<'DOCKERFILE'
FROM demo/sample:1.1
COPY about.html /srv/www/
RUN echo "built by strata" > /srv/www/built.txt
ENV GREETING=hello
CMD ["/bin/sh", "-c", "echo $GREETING from a strata build; read l < /srv/www/built.txt; echo $l"]
DOCKERFILE
printf '\n\033[1m$ cat %s/ctx/Dockerfile\033[0m\n' "$DEMO"; cat "$DEMO/ctx/Dockerfile"
say build -t demo/web:1 "$DEMO/ctx"
say history demo/web:1
say run --rm demo/web:1
say run --name once demo/web:1 /bin/sh -c 'echo run-time > /tmp/note; exit 3' || echo "(exit code $?)"
say ps -a
say diff once
say build -t demo/web:1 "$DEMO/ctx"
say system df

cat <<TXT

Done. The demo store is $STRATA_ROOT (remove it with: rm -rf $DEMO).
Where a registry is reachable, try: .venv/bin/strata pull alpine
TXT
