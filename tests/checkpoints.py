"""Generated ResNet18 checkpoints in torchvision's key layout, and an
independent forward pass written with `torch.nn.functional` to check against.
"""

import numpy as np

STAGES = [(64, 1), (128, 2), (256, 2), (512, 2)]


def resnet18_state_dict(seed=0, num_classes=1000, depth_blocks=(2, 2, 2, 2)):
    """A torchvision-layout ResNet18 state dict with random weights, as numpy.

    BatchNorm running statistics are random too, so that the test notices a
    backbone that ignores them.
    """
    rng = np.random.default_rng(seed)
    state = {}

    def conv(key, out_c, in_c, k):
        fan_in = in_c * k * k
        state[key + ".weight"] = (rng.standard_normal((out_c, in_c, k, k)) * np.sqrt(2.0 / fan_in)).astype("float32")

    def bn(key, c):
        state[key + ".weight"] = rng.uniform(0.5, 1.5, c).astype("float32")
        state[key + ".bias"] = rng.uniform(-0.2, 0.2, c).astype("float32")
        state[key + ".running_mean"] = rng.uniform(-0.3, 0.3, c).astype("float32")
        state[key + ".running_var"] = rng.uniform(0.5, 2.0, c).astype("float32")
        state[key + ".num_batches_tracked"] = np.array(100, dtype="int64")

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_c = 64
    for stage, ((out_c, stride), blocks) in enumerate(zip(STAGES, depth_blocks), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            conv(prefix + ".conv1", out_c, in_c, 3)
            bn(prefix + ".bn1", out_c)
            conv(prefix + ".conv2", out_c, out_c, 3)
            bn(prefix + ".bn2", out_c)
            if block == 0 and (stride != 1 or in_c != out_c):
                conv(prefix + ".downsample.0", out_c, in_c, 1)
                bn(prefix + ".downsample.1", out_c)
            in_c = out_c
    state["fc.weight"] = (rng.standard_normal((num_classes, 512)) * 0.01).astype("float32")
    state["fc.bias"] = np.zeros(num_classes, "float32")
    return state


def save_pth(state, path):
    import torch

    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
    return path


def _preprocess(images_uint8, dtype):
    """torchvision's preprocessing: x / 255, then ImageNet mean/std; NHWC uint8 -> NCHW."""
    import torch

    x = torch.from_numpy(images_uint8.astype("float64") / 255.0).to(dtype).permute(0, 3, 1, 2)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _pooled_features(x, t, bn, relu=None):
    """ResNet18's pooled features of `x` with weights `t` (torchvision keys); `bn(x, key)` is the
    BatchNorm, `relu(x, key)` the ReLU (default `F.relu`)."""
    import torch.nn.functional as F

    relu = relu or (lambda x, key: F.relu(x))
    x = relu(bn(F.conv2d(x, t["conv1.weight"], stride=2, padding=3), "bn1"), "relu")
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, (_, stride) in enumerate(STAGES, start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            s = stride if block == 0 else 1
            out = relu(bn(F.conv2d(x, t[p + ".conv1.weight"], stride=s, padding=1), p + ".bn1"), p + ".relu1")
            out = bn(F.conv2d(out, t[p + ".conv2.weight"], stride=1, padding=1), p + ".bn2")
            if p + ".downsample.0.weight" in t:
                x = bn(F.conv2d(x, t[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
            x = relu(out + x, p + ".relu2")
    return x.mean(dim=(2, 3))


def torch_features(state, images_uint8):
    """Pooled 512-d ResNet18 features of uint8 NHWC images, in plain torch.

    The preprocessing is torchvision's: x / 255, then ImageNet mean/std.
    """
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}

    def bn(x, key):
        return F.batch_norm(
            x,
            t[key + ".running_mean"],
            t[key + ".running_var"],
            t[key + ".weight"],
            t[key + ".bias"],
            training=False,
            eps=1e-5,
        )

    with torch.no_grad():
        return _pooled_features(_preprocess(images_uint8, torch.float32), t, bn).numpy()


def torch_training_step(state, head_kernel, head_bias, images_uint8, labels, lr, relu_inputs=None, relu_decisions=None):
    """One SGD step of the whole classifier in plain float64 torch, with Keras's BN semantics.

    Returns `(new_state, new_head_kernel, new_head_bias)`: the backbone's
    weights after the step and its BatchNorm running statistics updated as
    `keras.layers.BatchNormalization(momentum=0.9)` does (biased batch
    variance), in torchvision's key layout. `relu_inputs`, a dict, receives
    every ReLU's input (NCHW) by name. `relu_decisions` maps a ReLU's name to
    `(where, keep)` boolean arrays of its input's shape: at `where`, the ReLU
    passes its input iff `keep` (how another implementation decided values
    within rounding of zero), elsewhere iff the input is positive.
    """
    import torch
    import torch.nn.functional as F

    t = {
        k: torch.tensor(np.asarray(v), dtype=torch.float64)
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    trainable = [k for k in t if k.endswith((".weight", ".bias")) and not k.startswith("fc.")]
    for k in trainable:
        t[k].requires_grad_(True)
    kernel = torch.tensor(np.asarray(head_kernel), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(np.asarray(head_bias), dtype=torch.float64, requires_grad=True)
    running = {}

    def bn(x, key):
        batch_mean = x.mean(dim=(0, 2, 3))
        batch_var = x.var(dim=(0, 2, 3), unbiased=False)
        running[key + ".running_mean"] = 0.9 * t[key + ".running_mean"] + 0.1 * batch_mean.detach()
        running[key + ".running_var"] = 0.9 * t[key + ".running_var"] + 0.1 * batch_var.detach()
        shape = (1, -1, 1, 1)
        x = (x - batch_mean.view(shape)) / torch.sqrt(batch_var.view(shape) + 1e-5)
        return x * t[key + ".weight"].view(shape) + t[key + ".bias"].view(shape)

    def relu(x, key):
        if relu_inputs is not None:
            relu_inputs[key] = x.detach().numpy().copy()
        if relu_decisions and key in relu_decisions:
            where, keep = (torch.from_numpy(a) for a in relu_decisions[key])
            return x * torch.where(where, keep, x > 0).to(x.dtype)
        return F.relu(x)

    logits = _pooled_features(_preprocess(images_uint8, torch.float64), t, bn, relu) @ kernel + bias
    loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(labels), dtype=torch.long))
    loss.backward()
    with torch.no_grad():
        new_state = {k: (v - lr * v.grad if k in trainable else v).numpy() for k, v in t.items()}
        new_state.update({k: v.numpy() for k, v in running.items()})
        return new_state, (kernel - lr * kernel.grad).numpy(), (bias - lr * bias.grad).numpy()
