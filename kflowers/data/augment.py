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
