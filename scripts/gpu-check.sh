#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: checks the `cuda` build of mvc against its own CPU output
# on the CLIP fixture (within 1e-3), then measures images per second at batch 256 in f32 and
# bf16 with a ViT-B/32-sized model, printing lines ready for BENCHMARKS.md with the card's name.
#
#   scripts/gpu-check.sh [DIR]     DIR holds mvc and embed-bench from scripts/build-cuda.sh
#                                  (default target/cuda/release)
#
# The machine needs the NVIDIA driver (libcuda.so.1) and the CUDA 13 libraries cudarc links
# (libnvrtc.so.13, libcurand.so.10, libcublas.so.13, libcublasLt.so.13): found on the library
# path, or in a Python environment's `nvidia` wheels (PyTorch's), which this script adds.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/cuda/release}
BIN=$DIR/mvc
BENCH=$DIR/embed-bench
FIXTURE=tests/data/clip-tiny
for f in "$BIN" "$BENCH" "$FIXTURE/model.safetensors"; do
  [ -e "$f" ] || { echo "gpu-check: $f is missing (run scripts/build-cuda.sh first)" >&2; exit 1; }
done

wheels=$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
roots = set(site.getsitepackages() + [site.getusersitepackages()])
want = ("libnvrtc.so.13", "libcurand.so.10", "libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13")
dirs = set()
for root in roots:
    for d in glob.glob(os.path.join(root, "nvidia", "**", "lib*"), recursive=True):
        if os.path.isdir(d) and any(os.path.exists(os.path.join(d, w)) for w in want):
            dirs.add(d)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH=${wheels}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$BIN" | grep -q 'not found'; then
  echo "gpu-check: libraries not found:" >&2; ldd "$BIN" | grep 'not found' >&2; exit 1
fi
GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)
echo "GPU: $GPU"

OUT=$(mktemp -d)
args=(--model "$FIXTURE" --dump-inputs)
for img in "$FIXTURE"/images/*.png; do args+=(--image "$img"); done
args+=(--text "a strawberry" --text "A glass of Orange-Juice! (3D scan, 4K textures)" --text "")
"$BIN" embed "${args[@]}" --device cpu --out "$OUT/cpu.safetensors"
"$BIN" embed "${args[@]}" --device cuda --out "$OUT/cuda.safetensors"
"$BIN" embed "${args[@]}" --device cuda --dtype bf16 --out "$OUT/bf16.safetensors"
python3 - "$OUT" <<'PY'
import json, struct, sys
def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        fmt = {"F32": "f", "I64": "q"}[t["dtype"]]
        out[name] = struct.unpack("<%d%s" % ((b - a) // struct.calcsize(fmt), fmt), data[a:b])
    return out
d = sys.argv[1]
cpu, cuda, bf16 = (load(f"{d}/{n}.safetensors") for n in ("cpu", "cuda", "bf16"))
ok = True
for name in ("pixel_values", "input_ids", "image_embeds", "text_embeds"):
    diff = max(abs(x - y) for x, y in zip(cpu[name], cuda[name]))
    good = diff <= 1e-3
    ok &= good
    print(f"cuda f32 vs cpu: {name}: max |diff| {diff:.2e} {'ok' if good else 'FAIL (> 1e-3)'}")
for name in ("image_embeds", "text_embeds"):
    diff = max(abs(x - y) for x, y in zip(cpu[name], bf16[name]))
    print(f"cuda bf16 vs cpu: {name}: max |diff| {diff:.2e} (bf16 is not held to 1e-3)")
sys.exit(0 if ok else 1)
PY
rm -rf "$OUT"

for dtype in f32 bf16; do
  line=$(MVC_BENCH_DEVICE=cuda MVC_BENCH_DTYPE=$dtype MVC_BENCH_BATCHES=256 MVC_BENCH_IMAGES=1024 "$BENCH" | grep '^batch')
  echo "$line"
  rate=$(echo "$line" | sed -E 's/^batch +256: +([0-9.]+) images\/s overlapped.*/\1/')
  echo "BENCHMARKS.md: | ${GPU%%,*} | ViT-B/32 | $dtype | batch 256 | $rate images/s | \`scripts/gpu-check.sh\` |"
done
