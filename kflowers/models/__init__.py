"""The model layer: the ResNet18 classifier, its weights, its files, its torch fast path.

resnet         `build_model`, `with_image_size`
weights        ImageNet checkpoint, `.pth`, `.safetensors`, `.weights.h5`, keras-hub presets
saving         `save_model`, `load_model`, `remember_class_names`: `.keras` files that keep class names
parts          `model_parts`: where the backbone, pooling and head are
losses         label smoothing for integer labels
torch_kernels  the backbone on torch's channels-last kernels, as one torch function
"""

from kflowers.lazy import lazy_exports


_EXPORTS = {
    "IMAGENET_MEAN": "kflowers.models.resnet",
    "IMAGENET_STD": "kflowers.models.resnet",
    "RESNET18_CONFIG": "kflowers.models.resnet",
    "build_model": "kflowers.models.resnet",
    "with_image_size": "kflowers.models.resnet",
    "TORCHVISION_RESNET18_URL": "kflowers.models.weights",
    "TORCHVISION_RESNET18_SHA256_PREFIX": "kflowers.models.weights",
    "load_weights": "kflowers.models.weights",
    "read_torch_state_dict": "kflowers.models.weights",
    "load_state_dict": "kflowers.models.weights",
    "fetch_imagenet_checkpoint": "kflowers.models.weights",
    "MAX_CLASSES_ENTRY_BYTES": "kflowers.models.saving",
    "save_model": "kflowers.models.saving",
    "read_class_names": "kflowers.models.saving",
    "load_model": "kflowers.models.saving",
    "MAX_INPUT_SIZE": "kflowers.models.saving",
    "remember_class_names": "kflowers.models.saving",
    "resnet18_state_shapes": "kflowers.models.weights",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
