"""Training-time augmentation beyond crops and flips: TrivialAugment as albumentations operations."""


def trivial_augment():
    """One colour or geometry operation per image, at a random strength: TrivialAugment (Müller and
    Hutter, 2021) as an albumentations `OneOf`, its operations and ranges after torchvision's
    `TrivialAugmentWide` (identity included)."""
    import albumentations as A

    return A.OneOf(
        [
            A.NoOp(),
            A.Affine(shear={"x": (-30, 30), "y": (0, 0)}, p=1),
            A.Affine(shear={"x": (0, 0), "y": (-30, 30)}, p=1),
            A.Affine(translate_percent={"x": (-0.3, 0.3), "y": (0, 0)}, p=1),
            A.Affine(translate_percent={"x": (0, 0), "y": (-0.3, 0.3)}, p=1),
            A.Affine(rotate=(-30, 30), p=1),
            A.ColorJitter(brightness=0.9, contrast=0, saturation=0, hue=0, p=1),
            A.ColorJitter(brightness=0, contrast=0.9, saturation=0, hue=0, p=1),
            A.ColorJitter(brightness=0, contrast=0, saturation=0.9, hue=0, p=1),
            A.Sharpen(alpha=(0.1, 0.9), p=1),
            A.Posterize(num_bits=(2, 8), p=1),
            A.Solarize(threshold_range=(0.0, 1.0), p=1),
            A.AutoContrast(p=1),
            A.Equalize(p=1),
        ],
        p=1,
    )


def image_transform(image_size, augment=False, random_erasing=0.0, seed=0):
    """The albumentations pipeline that makes a decoded photo a training or test image.

    Args:
        image_size: int. The side of the square image it returns.
        augment: `False` (resize only), `"basic"` (random-resized crop of
            0.25-1 of the area, horizontal flip) or `"trivial"` (basic, then
            `trivial_augment()`). Defaults to `False`.
        random_erasing: float. The probability of erasing a random
            rectangle (2-25% of the image) with noise, after the other
            steps; only with `augment`. Defaults to `0.0`.
        seed: int. The pipeline's seed (each image then gets its own, see
            `FlowerDataset.load`). Defaults to `0`.

    Example:
    ```python
    transform = image_transform(64, augment="trivial", random_erasing=0.25)
    image = transform(image=pixels)["image"]  # (64, 64, 3) uint8
    ```
    """
    import albumentations as A

    if not augment:
        return A.Compose([A.Resize(image_size, image_size)], seed=seed)
    steps = [A.RandomResizedCrop((image_size, image_size), scale=(0.25, 1.0)), A.HorizontalFlip()]
    if augment == "trivial":
        steps.append(trivial_augment())
    if random_erasing:
        steps.append(A.Erasing(p=random_erasing, scale=(0.02, 0.25), fill="random_uniform"))
    return A.Compose(steps, seed=seed)
