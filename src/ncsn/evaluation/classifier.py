"""A small CNN trained once on a grey-scale dataset's training split: its features give FID where Inception's say little.

Trained with a fixed seed on the real training split, then cached as safetensors + JSON (test accuracy, image size,
dataset, data fingerprint) in the data cache; loading reads tensors only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import DATASETS, DataConfig
from ..errors import InputError
from ..io import save_safetensors, write_json
from .reference import cached_arrays, eval_cache, reference_split

FORMAT = "ncsn-classifier-2"
FEATURE_DIM = 128


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallClassifier(nn.Module):
    """Three 3x3 conv-BN-ReLU layers, a 4x4 pooled map, a 128-d penultimate layer (the FID features), a linear head."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            *_conv(in_channels, 16), nn.MaxPool2d(2), *_conv(16, 32), nn.MaxPool2d(2), *_conv(32, 64),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, n_classes)

    def forward(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of uint8 (N, C, H, W) images."""
        features = self.body(images_uint8.float() / 127.5 - 1.0)
        return features, self.head(features)


@dataclass
class ClassifierInfo:
    """What the JSON beside the weights records."""

    dataset: str
    image_size: int
    in_channels: int
    n_classes: int
    test_accuracy: float
    train_fingerprint: str
    steps: int
    seed: int
    train_seconds: float
    format: str = FORMAT


def classifier_path(data: DataConfig, train_fingerprint: str) -> Path:
    version = FORMAT.rsplit("-", 1)[1]
    return eval_cache(data) / f"classifier_v{version}_{data.image_size}px_{train_fingerprint}.safetensors"


@torch.no_grad()
def classifier_outputs(model: SmallClassifier, images: torch.Tensor, batch_size: int = 1000) -> dict[str, np.ndarray]:
    """Penultimate features and class probabilities (float64) of uint8 images, batched."""
    device = next(model.parameters()).device
    model.eval()
    features, probs = [], []
    for start in range(0, len(images), batch_size):
        f, logits = model(images[start : start + batch_size].to(device))
        features.append(f.cpu().double())
        probs.append(logits.cpu().double().softmax(dim=1))
    return {"features": torch.cat(features).numpy(), "probs": torch.cat(probs).numpy()}


def default_steps(n_images: int, batch_size: int = 128) -> int:
    """40 epochs, at most 1,000 steps: seconds for the 1,500 digits, two epochs of (Fashion-)MNIST."""
    return min(1000, 40 * max(1, n_images // batch_size))


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int | None = None, batch_size: int = 128,
    seed: int = 0, device="cpu",
) -> SmallClassifier:
    """Adam at 1e-3 on seeded shuffles of the training split; the global RNG is left as it was."""
    steps = steps or default_steps(len(images), batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallClassifier(images.shape[1], n_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(len(images), generator=gen), 0
    model.train()
    for _ in range(steps):
        if cursor + batch_size > len(images):
            order, cursor = torch.randperm(len(images), generator=gen), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        _, logits = model(images[idx].to(device))
        loss = nn.functional.cross_entropy(logits, labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def load_classifier(path: Path, device="cpu") -> tuple[SmallClassifier, ClassifierInfo]:
    """Weights (safetensors) and their JSON; strict, so a file of another shape is an error, not a silent fit."""
    from safetensors.torch import load_file

    meta = path.with_suffix(".json")
    try:
        info = ClassifierInfo(**json.loads(meta.read_text()))
        if info.format != FORMAT:
            raise ValueError(f"format {info.format!r}")
        model = SmallClassifier(info.in_channels, info.n_classes)
        model.load_state_dict(load_file(str(path)), strict=True)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise InputError(f"{path}: unusable cached classifier ({first}); delete it and its .json to retrain") from None
    return model.to(device).eval(), info


def save_classifier(model: SmallClassifier, info: ClassifierInfo, path: Path) -> None:
    write_json(path.with_suffix(".json"), asdict(info))  # the weights last: present means complete
    save_safetensors(path, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def get_classifier(data: DataConfig, device="cpu", steps: int | None = None, seed: int = 0):
    """The cached classifier of a grey-scale labelled dataset at its configured size, trained on first use.

    Returns (model, info, path).
    """
    if DATASETS[data.dataset].channels != 1:
        raise InputError(
            f"the classifier metrics (cfid, cscore) are for grey-scale data; {data.dataset} is RGB: use is,fid,kid"
        )
    images, labels, train_fp = reference_split(data, "train")
    if labels is None:
        raise InputError(f"{data.dataset}: no class labels, so no classifier can be trained for cfid/cscore")
    path = classifier_path(data, train_fp)
    if path.is_file():
        model, info = load_classifier(path, device)
        return model, info, path
    start = time.perf_counter()
    n_classes = int(labels.max()) + 1
    steps = steps or default_steps(len(images))
    model = train_classifier(images, labels, n_classes, steps=steps, seed=seed, device=device)
    seconds = time.perf_counter() - start
    test_images, test_labels, _ = reference_split(data, "test")
    probs = classifier_outputs(model, test_images)["probs"]
    accuracy = float((probs.argmax(1) == test_labels.numpy()).mean())
    info = ClassifierInfo(data.dataset, data.image_size, images.shape[1], n_classes, accuracy, train_fp, steps, seed,
                          round(seconds, 2))
    save_classifier(model, info, path)
    return model, info, path


def classifier_reference(model: SmallClassifier, classifier_file: Path, data: DataConfig, split: str) -> dict:
    """Cached features and probabilities of a real split, stored beside the classifier that made them."""
    images, _, split_fp = reference_split(data, split)
    path = classifier_file.with_name(f"{classifier_file.stem}_{split}_{split_fp}.npz")
    return cached_arrays(path, lambda: classifier_outputs(model, images))
