#!/usr/bin/env bash
# On a machine with a CUDA GPU: the fast-path tests on the GPU, then the benchmark in fp32, bf16 and fp16.
#
#   bash benchmarks/gpu_check.sh            # writes gpu_check.md into $OUT (or benchmarks/)
#
# The tests run with TF32 off (NVIDIA_TF32_OVERRIDE=0): they compare against float32 references to
# 1e-4-1e-5, which TF32's 10-bit mantissa can't meet. The benchmark then runs as users run: TF32 on.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}"
mkdir -p "$out"
report="$out/gpu_check.md"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$report"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"
# The machine's own CUDA torch stays; torchvision for the lesson's side of the benchmark.
pip install -q -e ".[test,bench]" 2>&1 | grep -v "Running pip as the 'root' user" || true
{
  echo; echo "## fast-path tests on the GPU (TF32 off)"; echo '```'
  NVIDIA_TF32_OVERRIDE=0 python -m pytest -q -p no:cacheprovider tests/test_torch_layers.py \
    tests/test_torch_resnet.py tests/test_mixed_precision.py tests/test_feature_cache.py 2>&1 | tail -15
  echo '```'
  echo; echo "## a drawn dataset trained on the GPU from page-locked batches"; echo '```'
  python - <<'PY' 2>&1 | grep -v "^I0000\|^W0000"
import tempfile, torch, keras, kflowers
from kflowers.demo import draw_dataset
root = draw_dataset(tempfile.mkdtemp(), ["a", "b"], per_class=32, size=64)
ds = kflowers.FlowerDataset.from_folder(kflowers.scan_folder(root), batch_size=16, image_size=64, shuffle=True)
images, _ = ds[0]
print("pin_memory:", ds.pin_memory, "pinned:", getattr(images, "is_pinned", bool)(), "cuda:", torch.cuda.is_available())
model = kflowers.build_model(num_classes=2, weights=None, image_size=64)
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
print(model.fit(ds, epochs=2, shuffle=False, verbose=0).history)
PY
  echo '```'
  echo; echo "## benchmark: batch 64, 224 px (TF32 on, as torch defaults)"
  python benchmarks/benchmark.py --batch-size 64 --image-size 224 --steps 10 --warmup 2 \
    --extra A-channels-last A-bf16 A-channels-last-bf16 B-bf16 A-fp16 B-fp16 2>&1 | grep -v "^I0000\|^W0000"
  # The pretrained strategies' modern recipe (issue 35), where a flowers folder is given and the ImageNet
  # weights can be downloaded (or are cached): FLOWERS=path/to/flowers bash benchmarks/gpu_check.sh
  if [ -n "${FLOWERS:-}" ]; then
    echo; echo "## the pretrained strategies, modern recipe, ImageNet weights ($FLOWERS, seed 0)"
    python -m kflowers compare --data "$FLOWERS" --recipe modern --quiet --out "$out/compare-modern" \
      --strategies frozen finetune two-stage discriminative 2>&1 | grep -v "^I0000\|^W0000" \
      || echo "not measured: the command above failed (no network for the ImageNet weights?)"
  fi
} | tee -a "$report"
echo "written: $report"
