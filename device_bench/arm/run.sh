#!/bin/sh
# edgelora on an emulated aarch64 (Cortex-A72, as in a Raspberry Pi 4): builds once, and caches, an arm64
# Debian bookworm root from Debian's packages (debootstrap --foreign + qemu-user-static), installs edgelora
# and its test extra WITHOUT torch from official aarch64 wheels into a venv there, then runs the torch-free
# suite, `edgelora demo`, and a seeded fine-tune compared with the same fine-tune on this x86_64 host.
#
#   device_bench/arm/run.sh [--dry-run] [--steps suite,demo,agree] [-- PYTEST_ARGS...]
#
# PYTEST_ARGS default to the whole torch-free suite: -m "not torch" tests. Needs root (debootstrap, mount,
# chroot) and host packages debootstrap, qemu-user-static, binfmt-support. Everything inside the root
# (pip, pytest, edgelora) runs as the unprivileged user `edgelora`; all mounts live in a private mount
# and pid namespace (unshare), so they vanish with it, also when the run is interrupted or killed.
# Settings (environment): EDGELORA_ARM_ROOT (default /var/cache/edgelora-arm/bookworm-arm64),
# EDGELORA_ARM_MIRROR (http://deb.debian.org/debian), EDGELORA_ARM_OUT (bench_out/arm),
# EDGELORA_ARM_SOURCE (head = the committed tree, `git archive HEAD`; a git revision; worktree = tracked
# files as they are now), HOST_PYTHON (x86_64 side of the comparison; default .venv-test/bin/python).
# Emulation is ~50x slower than native: for correctness only, never for timing.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROOT=${EDGELORA_ARM_ROOT:-/var/cache/edgelora-arm/bookworm-arm64}
MIRROR=${EDGELORA_ARM_MIRROR:-http://deb.debian.org/debian}
OUT=${EDGELORA_ARM_OUT:-$REPO/bench_out/arm}
SOURCE=${EDGELORA_ARM_SOURCE:-head}
HOST_PYTHON=${HOST_PYTHON:-$REPO/.venv-test/bin/python}
DATASETS=$(cd "$REPO/.." && pwd)/shared/datasets
VENV=/opt/edgelora-venv                  # inside the root
SRC=/work/edgelora                       # inside the root; ../shared/datasets beside it, as in the repo
QEMU_CPU=cortex-a72                      # qemu's default CPU makes numpy pick SME kernels, ~20x slower
export QEMU_CPU

say() { echo "arm: $*" >&2; }
die() { echo "arm: $*" >&2; exit 2; }

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# --- inside the private namespaces: mount, run, unmount -------------------------------------------------

MOUNTS=""
mnt() {  # mnt TARGET MOUNT-ARGS...: mount and remember, so that cleanup unmounts in reverse order
    target=$1; shift
    mount "$@" "$target"
    MOUNTS="$target $MOUNTS"
}
cleanup() {
    for m in $MOUNTS; do umount "$m" 2>/dev/null || umount -l "$m"; done
    MOUNTS=""
}

# as_user CMD...: run CMD inside the root as the unprivileged user, niced, with a clean environment
as_user() {
    # pip trusts the host's CA bundle (a TLS-inspecting proxy's CA lives there, not in Debian's) and proxy
    nice -n 15 chroot --userspec=edgelora:edgelora "$ROOT" /usr/bin/env -i HOME=/home/edgelora \
        PATH="$VENV/bin:/usr/bin:/bin" LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" OMP_NUM_THREADS=1 \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_CERT=/etc/edgelora-host-ca.crt \
        ${PIP_INDEX_URL:+PIP_INDEX_URL="$PIP_INDEX_URL"} ${https_proxy:+https_proxy="$https_proxy"} \
        ${http_proxy:+http_proxy="$http_proxy"} ${no_proxy:+no_proxy="$no_proxy"} "$@"
}

inside() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM HUP
    mnt "$ROOT/proc" -t proc proc
    mnt "$ROOT/proc/cpuinfo" --bind "$ROOT/etc/cpuinfo-cortex-a72"   # onnxruntime crashes on an x86 one
    mnt "$ROOT/sys" --bind -o ro /sys                                # onnxruntime's cpuinfo reads cpu/possible
    mnt "$ROOT/dev" --bind /dev
    mnt "$ROOT/dev/shm" -t tmpfs -o size=512m tmpfs
    mkdir -p "$ROOT/work/shared/datasets"
    if [ -d "$DATASETS" ]; then mnt "$ROOT/work/shared/datasets" --bind -o ro "$DATASETS"; fi
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOT/etc/edgelora-host-ca.crt"
    say "mounted: $MOUNTS"
    as_user sh -c "cd $SRC && $*"
}

if [ "${1:-}" = "__inside" ]; then
    shift
    inside "$@"
    exit $?
fi

# --- on the host ---------------------------------------------------------------------------------------

DRY=0
STEPS=suite,demo,agree
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --steps) [ $# -ge 2 ] || usage; STEPS=$2; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) die "unknown argument '$1' (expected --dry-run, --steps LIST or -- PYTEST_ARGS)" ;;
    esac
    shift
done
if [ $# -eq 0 ]; then set -- -m "not torch" tests; fi
PYTEST_ARGS=""   # each argument single-quoted for the shell inside the root: -m 'not torch' stays one argument
for arg in "$@"; do PYTEST_ARGS="$PYTEST_ARGS '$(printf '%s' "$arg" | sed "s/'/'\\\\''/g")'"; done
PYTEST_ARGS=${PYTEST_ARGS# }
case "$SOURCE" in
    worktree) ;;
    head) SOURCE=HEAD ;;
    *) git -C "$REPO" rev-parse --verify --quiet "$SOURCE^{commit}" >/dev/null \
        || die "EDGELORA_ARM_SOURCE: expected head, worktree or a git revision, found '$SOURCE'" ;;
esac
for s in $(echo "$STEPS" | tr , ' '); do
    case "$s" in suite|demo|agree) ;; *) die "--steps: expected a list of suite,demo,agree, found '$s'" ;; esac
done
has() { case ",$STEPS," in *",$1,"*) return 0 ;; esac; return 1; }

# run_inside "SHELL COMMAND": one private mount+pid namespace per command; --kill-child takes every
# process of the namespace down with the script, and the kernel drops the namespace's mounts with it
run_inside() {
    if [ "$DRY" = 1 ]; then echo "  [in aarch64 root as edgelora] $1"; return 0; fi
    unshare --mount --pid --fork --kill-child --propagation private sh "$0" __inside "$1" &
    CHILD=$!
    wait "$CHILD"
}
CHILD=""
# a signal to this script ends the namespace: SIGKILL to unshare (which ignores TERM while it waits) makes
# --kill-child kill the namespace's init, and with it every process and every mount in the namespace
trap '[ -z "$CHILD" ] || kill -KILL "$CHILD" 2>/dev/null; exit 130' INT TERM HUP

if [ "$DRY" = 1 ]; then
    echo "arm: dry run: would use root $ROOT (QEMU_CPU=$QEMU_CPU), source $SOURCE, out $OUT"
else
    [ "$(id -u)" = 0 ] || die "needs root for debootstrap, mount and chroot (run it with sudo); found uid $(id -u)"
    for tool in debootstrap qemu-aarch64-static unshare chroot git; do
        command -v "$tool" >/dev/null || die "needs '$tool' on the host (apt-get install -y debootstrap qemu-user-static binfmt-support)"
    done
    mkdir -p "$OUT"
fi
T0=$(date +%s)

# 1. binfmt: the kernel must hand aarch64 binaries to qemu (F flag: works inside the chroot)
if [ "$DRY" = 0 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 || die "could not register qemu-aarch64 with binfmt_misc"
fi

# 2. the root, once: debootstrap --foreign on the host, the second stage under qemu, then renamed into place
if [ "$DRY" = 1 ]; then
    built=$([ -e "$ROOT/.edgelora-root-done" ] && echo "built, cached" || echo "to build")
    echo "  [root: $built] debootstrap --foreign --arch=arm64 --variant=minbase bookworm $ROOT $MIRROR; second stage under qemu"
elif [ ! -e "$ROOT/.edgelora-root-done" ]; then
    tmp="$ROOT.partial"
    say "building the arm64 root in $tmp (once; cached in $ROOT)"
    if [ -e "$tmp" ]; then
        [ -e "$tmp/debootstrap" ] || [ -e "$tmp/.edgelora-partial" ] || die "$tmp exists and was not made by this script; remove it or set EDGELORA_ARM_ROOT"
        rm -rf "$tmp"
    fi
    mkdir -p "$tmp" && touch "$tmp/.edgelora-partial"
    debootstrap --foreign --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,ca-certificates,passwd bookworm "$tmp" "$MIRROR"
    cp /usr/bin/qemu-aarch64-static "$tmp/usr/bin/"
    unshare --mount --pid --fork --kill-child --propagation private \
        chroot "$tmp" /debootstrap/debootstrap --second-stage
    chroot "$tmp" useradd --create-home --uid 1000 --shell /bin/sh edgelora
    n=$(nproc); i=0; : > "$tmp/etc/cpuinfo-cortex-a72"
    while [ $i -lt "$n" ]; do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' $i >> "$tmp/etc/cpuinfo-cortex-a72"
        i=$((i + 1))
    done
    mkdir -p "$tmp/work" "$tmp$VENV"
    chroot "$tmp" chown edgelora:edgelora /work "$VENV"
    rm "$tmp/.edgelora-partial"
    touch "$tmp/.edgelora-root-done"
    [ ! -e "$ROOT" ] || die "$ROOT appeared while building; not replacing it"
    mv "$tmp" "$ROOT"
fi

# 3. the source: one snapshot (copies the script owns), run on both machines; then edgelora + the test
#    extra into the root from official aarch64 wheels only
if [ "$DRY" = 0 ]; then
    rm -rf "$OUT/src" "$ROOT$SRC" && mkdir -p "$OUT/src" "$ROOT$SRC"
    if [ "$SOURCE" = worktree ]; then
        (cd "$REPO" && git ls-files -z | xargs -0 tar -c --ignore-failed-read) | tar -x -C "$OUT/src"
        say "source: tracked files of the work tree as they are now"
    else
        git -C "$REPO" archive "$SOURCE" | tar -x -C "$OUT/src"
        say "source: $(git -C "$REPO" rev-parse --short "$SOURCE") (git archive $SOURCE)"
    fi
    cp -r "$OUT/src/." "$ROOT$SRC/"
    chroot "$ROOT" chown -R edgelora:edgelora "$SRC"
fi
stamp=$(cksum < "$REPO/pyproject.toml")
if [ "$DRY" = 1 ] || [ "$(cat "$ROOT$VENV/.installed" 2>/dev/null || true)" != "$stamp" ]; then
    run_inside "{ [ -x $VENV/bin/python ] || python3 -m venv $VENV; } && pip install --quiet --only-binary=:all: -e '.[test]' && \
if python -c 'import torch' 2>/dev/null; then echo 'torch must not be installed' >&2; exit 1; fi"
    [ "$DRY" = 1 ] || echo "$stamp" > "$ROOT$VENV/.installed"
fi
run_inside "python device_bench/arm/report.py wheels $VENV > /tmp/wheels.txt"
[ "$DRY" = 1 ] || { cp "$ROOT/tmp/wheels.txt" "$OUT/wheels.txt"; cat "$OUT/wheels.txt" >&2; }

status=0
# 4. the demo, and 5. a seeded fine-tune of the demo's data on both machines, compared
if has demo || has agree; then
    if [ "$DRY" = 1 ]; then
        echo "  [host x86_64] $HOST_PYTHON -m edgelora.cli demo --no-plot --json --save-data $OUT/x86"
    else
        rm -rf "$OUT/x86"
        (cd "$OUT/src" && "$HOST_PYTHON" -m edgelora.cli demo --no-plot --json --save-data "$OUT/x86" > "$OUT/demo-x86.json")
        rm -rf "$ROOT/tmp/agree" && mkdir -p "$ROOT/tmp/agree"
        cp -r "$OUT/x86/." "$ROOT/tmp/agree/" && chroot "$ROOT" chown -R edgelora:edgelora /tmp/agree
    fi
fi
FT="--rank 8 --epochs 60 --weight-decay 0.1 --seed 0 --quiet"
if has demo; then
    run_inside "edgelora demo --no-plot --json > /tmp/demo-arm.json"
    [ "$DRY" = 1 ] || cp "$ROOT/tmp/demo-arm.json" "$OUT/demo-arm.json"
fi
if has agree; then
    if [ "$DRY" = 1 ]; then
        echo "  [host x86_64 and aarch64] edgelora finetune bundle --data finetune.npz $FT; edgelora eval --json"
    else
        (cd "$OUT/x86" && PYTHONPATH="$OUT/src" "$HOST_PYTHON" -m edgelora.cli finetune bundle --data finetune.npz \
            --out adapter $FT && PYTHONPATH="$OUT/src" "$HOST_PYTHON" -m edgelora.cli eval bundle --adapter adapter \
            --data test.npz --json > eval.json)
    fi
    run_inside "cd /tmp/agree && edgelora finetune bundle --data finetune.npz --out adapter $FT && \
edgelora eval bundle --adapter adapter --data test.npz --json > eval.json"
    if [ "$DRY" = 0 ]; then
        rm -rf "$OUT/arm" && cp -r "$ROOT/tmp/agree" "$OUT/arm"
    fi
fi
if [ "$DRY" = 0 ] && { has demo || has agree; }; then
    "$HOST_PYTHON" "$HERE/report.py" agree "$OUT" > "$OUT/agree.txt" || status=1
    cat "$OUT/agree.txt" >&2
fi

# 6. the torch-free suite (last: the longest)
if has suite; then
    say "suite: pytest $PYTEST_ARGS"
    t=$(date +%s)
    rm -f "$ROOT/tmp/junit.xml"
    if [ "$DRY" = 1 ]; then run_inside "python -m pytest -q -p no:cacheprovider --junitxml=/tmp/junit.xml $PYTEST_ARGS"
    else run_inside "python -m pytest -q -p no:cacheprovider --junitxml=/tmp/junit.xml $PYTEST_ARGS" > "$OUT/suite.log" 2>&1 || true
    fi
    [ "$DRY" = 1 ] || {
        cp "$ROOT/tmp/junit.xml" "$OUT/junit.xml" 2>/dev/null || true
        tail -n 3 "$OUT/suite.log" >&2
        "$HOST_PYTHON" "$HERE/report.py" junit "$OUT/junit.xml" --seconds $(( $(date +%s) - t )) \
            > "$OUT/suite.txt" || status=1
        cat "$OUT/suite.txt" >&2
    }
fi

if [ "$DRY" = 0 ]; then
    left=$(grep -c " $ROOT" /proc/mounts || true)
    say "mounts of $ROOT left on the host: $left"
    [ "$left" = 0 ] || status=1
    say "wall time $(( $(date +%s) - T0 )) s; results in $OUT"
fi
exit $status
