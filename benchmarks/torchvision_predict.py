"""Classify photos the way a PyTorch user writes it: torchvision's ResNet18, PIL, transforms, a DataLoader.

The reference side of `benchmarks/predict_throughput.py`. Reads the photo paths from a file (one a line),
prints one JSON line per photo with its top 3 classes, as `kflowers predict --json` does.

    python benchmarks/torchvision_predict.py paths.txt > answers.jsonl
"""

import json
import sys

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset
from torchvision import transforms

CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]

transform = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)


class Photos(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.paths[index]) as image:
            return transform(image.convert("RGB")), index


def main():
    with open(sys.argv[1]) as f:
        paths = [line.strip() for line in f if line.strip()]
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    model.eval()
    loader = DataLoader(Photos(paths), batch_size=32, num_workers=2)
    with torch.no_grad():
        for images, indices in loader:
            probabilities, classes = model(images).softmax(dim=1).topk(3)
            for index, p, c in zip(indices.tolist(), probabilities.tolist(), classes.tolist()):
                top = [{"class": CLASSES[k], "probability": v} for k, v in zip(c, p)]
                print(json.dumps({"image": paths[index], "top": top}))


if __name__ == "__main__":
    main()
