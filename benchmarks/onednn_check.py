"""What TensorFlow's oneDNN kernels do to kflowers's float32 training-step test.

Runs the test's float32 forward pass (training mode, generated ResNet18
weights and images) on the current Keras backend and compares every ReLU's
input with a float64 plain-torch reference: how far off float32 is at each
depth, how near to zero the reference's nearest value lies, and how many
values float32 sends to the other side of the ReLU.

    KERAS_BACKEND=tensorflow python benchmarks/onednn_check.py
    KERAS_BACKEND=tensorflow ONEDNN_MAX_CPU_ISA=SSE41 python benchmarks/onednn_check.py

The second line runs the SSE4.1 kernels oneDNN uses on AMD EPYC machines.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import tempfile  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kflowers  # noqa: E402
from checkpoints import resnet18_state_dict, save_pth, torch_training_step  # noqa: E402

SIZE, SEED = 64, 2
RELU_LAYERS = {
    "relu": "conv1_relu",
    **{
        f"layer{s + 1}.{b}.relu{i + 1}": f"stack{s}_block{b}_{name}"
        for s in range(4)
        for b in range(2)
        for i, name in enumerate(["1_relu", "out"])
    },
}


def main():
    state = resnet18_state_dict(seed=SEED)
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, (8, SIZE, SIZE, 3)).astype("uint8")
    labels = rng.integers(0, 5, 8)
    head = [rng.standard_normal((512, 5)).astype("float32") * 0.3, rng.uniform(-0.1, 0.1, 5).astype("float32")]
    reference = {}
    torch_training_step(state, *head, images, labels, lr=0.1, relu_inputs=reference)
    with tempfile.TemporaryDirectory() as tmp:
        model = kflowers.build_model(
            weights=str(save_pth(state, os.path.join(tmp, "r18.pth"))), image_size=SIZE, torch_kernels=False
        )
    backbone = model.get_layer("backbone")
    probe = keras.Model(backbone.inputs, [backbone.get_layer(n).input for n in RELU_LAYERS.values()])
    outputs = probe(model.get_layer("preprocess")(images.astype("float32")), training=True)
    print(
        f"backend {keras.backend.backend()}, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(all)')}, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(default)')}"
    )
    print("| ReLU input | values | float32 error / spread | nearest to zero / spread | sign flips |")
    print("|---|---|---|---|---|")
    for (key, _), output in zip(RELU_LAYERS.items(), outputs):
        actual = keras.ops.convert_to_numpy(output).transpose(0, 3, 1, 2)
        ref = reference[key]
        spread = ref.std()
        flips = int(np.sum((actual > 0) != (ref > 0)))
        print(
            f"| {key} | {ref.size} | {np.abs(actual - ref).max() / spread:.1e} | "
            f"{np.abs(ref).min() / spread:.1e} | {flips} |"
        )


if __name__ == "__main__":
    main()
