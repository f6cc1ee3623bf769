#!/usr/bin/env bash
# The tiny test bundle on an emulated ARM64 CPU, against this machine (not run in CI: it downloads an arm64
# Debian user space and aarch64 wheels, and takes minutes). See docs/cpus.md.
#
#   bash scripts/arm64-check.sh [FIXTURE]        FIXTURE: a built test fixture (default build/test-fixture)
#   ARM64_CPU=cortex-a72 bash scripts/arm64-check.sh
#
# 1. An arm64 Debian bookworm user space in ARM64_ROOT (default build/arm64, kept between runs): debootstrap
#    --foreign downloads python3 and its dependencies, each .deb is unpacked into the root (no second stage:
#    nothing runs as the arm64 root), then its python3.11 installs the runtime's dependencies into
#    ARM64_ROOT/site with pip, onnxruntime and numpy at this .venv's versions.
# 2. ARM64_ROOT/proc/cpuinfo describes the emulated CPU: qemu-aarch64 -L reads files in the root first, and
#    onnxruntime's start-up crashes on the host's x86 cpuinfo.
# 3. tests/isa/jobs.py embeds the 36 parity sentences and the fixture photos at fp32 and int8, natively and
#    under qemu-aarch64 -cpu ARM64_CPU (default neoverse-n1: Armv8.2 with dot-product instructions;
#    cortex-a72: Armv8.0 without them); the cosines per row are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=$(realpath "${1:-build/test-fixture}")
root=$(realpath -m "${ARM64_ROOT:-build/arm64}")
cpu=${ARM64_CPU:-neoverse-n1}
python=.venv/bin/python
[ -f "$fixture/COMPLETE" ] || { echo "$fixture: not a built fixture (python -m tests.fixture $fixture)" >&2; exit 2; }

missing=()
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$root/usr/bin/python3.11" ]; then
    echo "== an arm64 user space in $root"
    mkdir -p "$root"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-pip bookworm "$root" >/dev/null
    for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
fi

case "$cpu" in
    neoverse-n1) part=0xd0c variant=0x3 revision=1
                 features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
    cortex-a72)  part=0xd08 variant=0x0 revision=3 features="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid" ;;
    *) echo "ARM64_CPU=$cpu: this script describes neoverse-n1 and cortex-a72" >&2; exit 2 ;;
esac
mkdir -p "$root/proc"
for n in 0 1; do
    printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\n' "$n" "$features"
    printf 'CPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$variant" "$part" "$revision"
done > "$root/proc/cpuinfo"

arm() { PYTHONPATH="$root/site:$PWD/src" qemu-aarch64 -cpu "$cpu" -L "$root" "$root/usr/bin/python3.11" "$@"; }
versions=$($python -c "from importlib.metadata import version as v; print(f'onnxruntime=={v(\"onnxruntime\")} numpy=={v(\"numpy\")}')")
if ! arm -c "import onnxruntime, numpy, tokenizers, PIL" 2>/dev/null; then
    echo "== aarch64 wheels into $root/site ($versions)"
    qemu-aarch64 -L "$root" "$root/usr/bin/python3.11" -m pip install -q --disable-pip-version-check \
        --break-system-packages --target "$root/site" $versions tokenizers pillow click tqdm
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for precision in fp32 int8; do
    $python - "$fixture" "$precision" > "$work/$precision.json" <<'EOF'
import json, sys
from tests.cases import PARITY_TEXTS, PHOTOS
fixture, precision = sys.argv[1:]
print(json.dumps({"bundle": f"{fixture}/bundle", "precision": precision, "texts": PARITY_TEXTS,
                  "images": [f"{fixture}/photos/{name}" for name in PHOTOS]}))
EOF
    echo "== $precision: this machine, then qemu-aarch64 -cpu $cpu"
    $python tests/isa/jobs.py encode "$work/$precision.json" "$work/$precision-native.npz"
    start=$SECONDS
    arm tests/isa/jobs.py encode "$work/$precision.json" "$work/$precision-arm64.npz"
    echo "   (emulated: $((SECONDS - start)) s, not a speed)"
done

$python - "$work" "$cpu" <<'EOF'
import sys
import numpy as np
work, cpu = sys.argv[1:]
load = lambda name: np.load(f"{work}/{name}.npz")
def cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
print("cpu features numpy saw under qemu:", " ".join(load("int8-arm64")["cpu"]))
print(f"cosine per row, min / mean (36 sentences, 5 photos)")
pairs = {f"{cpu} fp32 vs native fp32": ("fp32-arm64", "fp32-native"),
         f"{cpu} int8 vs native int8": ("int8-arm64", "int8-native"),
         f"{cpu} int8 vs native fp32": ("int8-arm64", "fp32-native"),
         "native int8 vs native fp32": ("int8-native", "fp32-native")}
for label, (a, b) in pairs.items():
    cells = []
    for kind in ("texts", "images"):
        c = cosines(load(a)[kind], load(b)[kind])
        cells.append(f"{kind} {c.min():.5f} / {c.mean():.5f}")
    print(f"  {label:28s} " + "   ".join(cells))
EOF
