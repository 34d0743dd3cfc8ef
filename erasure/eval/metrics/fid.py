"""`fid` and `kid`: how far the generated images' distribution is from a reference set's, in a
feature space.

Protocol
--------
* Reference set (`reference` setting, required): either a tensor (N, 3, H, W) float in [0, 1]
  (uint8 0-255 is also accepted and divided by 255), or a folder whose png / jpg / jpeg / webp
  files (top level only, sorted by name, other files ignored) are loaded with Pillow, converted
  to RGB and scaled to [0, 1]. Folder images are read a batch at a time, so a large reference
  set is never held in memory as pixels. An unreadable image file is a UserError naming the
  first bad file; a folder without images is a UserError.
* Features (`features` setting; default "mini" when the generated images are 64x64, otherwise
  "inception"):
  - "mini": the bundled MiniSD judge's penultimate features,
    `judge.features(images * 2 - 1).mean(dim=(2, 3))`, 128-d; images (both sets) must be 64x64.
    Numbers are reported as FID-mini / KID-mini: they are comparable with each other, not with
    published Inception FIDs.
  - "inception": torchvision's Inception-v3 architecture (`inception_v3(weights=None,
    aux_logits=False, init_weights=False, transform_input=True)`, `fc` replaced by identity), i.e.
    the 2048-d average-pooled output of Mixed_7c ("pool3"). Weights come only from a local
    safetensors file given by `inception_weights` (a state_dict of that architecture; `fc.*` and
    `AuxLogits.*` keys, as in a converted torchvision checkpoint, are ignored). Erasure never
    downloads weights and never loads pickles (.pt/.pth/.bin/.ckpt are refused with the fix).
    Preprocessing: each image is resized to 299x299 with bilinear interpolation (align_corners
    False, antialiased when shrinking; the aspect ratio is not kept, no crop), normalised with the
    ImageNet mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), and the network runs with
    `transform_input=True`, exactly as torchvision sets it up for its IMAGENET1K_V1 weights (the
    net input is then x * 2 - 1, what Google's Inception weights expect). These features are not
    those of the TensorFlow FID Inception (pytorch-fid / clean-fid "pt_inception-2015-12-05"), so
    the numbers are comparable only between runs that used the same weights file (its sha256 is
    recorded in the protocol), not with published FIDs.
* FID: mu, Sigma = mean and covariance (ddof = 1) of each set's features, in float64;
  FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), where
  tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)) (a symmetric PSD matrix,
  so eigh is stable even for the singular covariances of small sets; eigenvalues below zero from
  rounding are clamped to 0). FID is biased upward at small N: compare only values with the
  same N (recorded as n_images / n_reference).
* KID: unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
  `subsets` (default 100) random subsets of `subset_size` (default 1000, capped at the smaller
  set's size) drawn without replacement from each set with a torch.Generator seeded by `seed`
  (default 0); summary is the mean and the standard deviation (ddof = 0) over subsets.
* `batch_size` (default 50) and `device` (default "cpu") change the numbers only by float
  rounding. Reference features are cached per metric instance and feature extractor.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import UserError
from ...files import PICKLE_SUFFIXES, load_tensors
from ...images import load_image
from . import Metric, register_metric

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
INCEPTION_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES = ("mini", "inception")

_NEEDS_WEIGHTS = ("the inception feature extractor needs local weights: pass inception_weights=<path to a "
                  "safetensors state_dict of torchvision's inception_v3> (erasure never downloads), "
                  "or use features='mini' for 64x64 MiniSD images")


# ----------------------------------------------------------------------------- maths

def _as_float64(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().to("cpu", torch.float64)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative rounding clamped)."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Any, s1: Any, mu2: Any, s2: Any) -> float:
    """Frechet distance between N(mu1, s1) and N(mu2, s2), computed in float64.

    tr((s1 s2)^(1/2)) is taken as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix s1^(1/2) s2 s1^(1/2) (same spectrum as s1 s2), which stays real and stable when the
    covariances are singular."""
    mu1, mu2, s1, s2 = (_as_float64(a) for a in (mu1, mu2, s1, s2))
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance needs mu (d,) and sigma (d, d) of one d; got {tuple(mu1.shape)}, "
                         f"{tuple(s1.shape)}, {tuple(mu2.shape)}, {tuple(s2.shape)}")
    if not all(torch.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("frechet_distance got non-finite means or covariances")
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    value = (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * eig.sqrt().sum()
    return max(float(value), 0.0)  # >= 0 in exact arithmetic; rounding can leave -1e-12


def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance with ddof=1) of (N, d) features, float64."""
    feats = _as_float64(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, d) features, got {tuple(feats.shape)}")
    return feats.mean(0), torch.cov(feats.T).reshape(feats.shape[1], feats.shape[1])


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    d = x.shape[1]
    m = x.shape[0]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = m * (m - 1)
    return float((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
                 - 2 * kxy.mean())


def kid(f1: Any, f2: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance of two (N, d) feature sets: (mean, std with ddof=0) over `subsets`
    unbiased MMD^2 estimates, polynomial kernel (x.y / d + 1)^3, each on `subset_size` features
    drawn without replacement from each set (capped at the smaller set's size), seeded."""
    f1, f2 = _as_float64(f1), _as_float64(f2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kid needs two (N, d) feature sets of one d, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    m = min(int(subset_size), f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"kid needs subsets of at least 2 features per set, got {m}")
    if subsets < 1:
        raise ValueError(f"kid needs subsets >= 1, got {subsets}")
    g = torch.Generator().manual_seed(int(seed))
    values = []
    for _ in range(int(subsets)):
        i = torch.randperm(f1.shape[0], generator=g)[:m]
        j = torch.randperm(f2.shape[0], generator=g)[:m]
        values.append(_mmd2_unbiased(f1[i], f2[j]))
    arr = np.asarray(values)
    return float(arr.mean()), float(arr.std())


# ----------------------------------------------------------------------------- image sources

def _load_image(path: Path) -> torch.Tensor:
    """One reference image file -> (3, H, W) float in [0, 1] (erasure/images.py's reader)."""
    return load_image(path, "reference image", "remove or replace that file")


def _folder_images(folder: Path) -> list[Path]:
    if not folder.exists():
        raise UserError(f"reference folder {folder} does not exist; "
                        "pass reference=<folder of images or (N, 3, H, W) tensor>")
    if not folder.is_dir():
        raise UserError(f"reference {folder} is not a folder; pass a folder of png/jpg/jpeg/webp images "
                        "or an (N, 3, H, W) tensor in [0, 1]")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"reference folder {folder} has no png/jpg/jpeg/webp images; put the reference images there")
    return files


def _check_tensor(images: Any, what: str) -> torch.Tensor:
    if not torch.is_tensor(images):
        raise UserError(f"{what} must be an (N, 3, H, W) tensor in [0, 1] (or, for reference, a folder), "
                        f"got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"{what} must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    images = images.detach().cpu().float()
    if images.numel() and (images.min() < -1e-4 or images.max() > 1 + 1e-4):
        raise UserError(f"{what} must be in [0, 1], got values in [{float(images.min()):.3g}, "
                        f"{float(images.max()):.3g}]; rescale them (e.g. (x + 1) / 2 for [-1, 1] images)")
    return images.clamp(0, 1)


class _Source:
    """A set of images: an in-memory tensor or the files of a folder, read a batch at a time."""

    def __init__(self, images: Any, what: str, allow_folder: bool = True) -> None:
        self.what = what
        self.folder: Path | None = None
        self.files: list[Path] | None = None
        self.tensor: torch.Tensor | None = None
        if allow_folder and isinstance(images, (str, Path)):
            self.folder = Path(images)
            self.files = _folder_images(self.folder)
        else:
            self.tensor = _check_tensor(images, what)

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else self.tensor.shape[0]

    def batches(self, batch_size: int) -> Iterator[tuple[list[str], list[torch.Tensor] | torch.Tensor]]:
        """(names for messages, images) per batch; images a (B,3,H,W) tensor or a list of (3,H,W)."""
        for start in range(0, len(self), batch_size):
            if self.files is not None:
                chunk = self.files[start:start + batch_size]
                yield [str(p) for p in chunk], [_load_image(p) for p in chunk]
            else:
                stop = min(start + batch_size, len(self))
                yield [f"{self.what}[{i}]" for i in range(start, stop)], self.tensor[start:stop]


# ----------------------------------------------------------------------------- feature extractors

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_inception() -> torch.nn.Module:
    """torchvision's Inception-v3 as used here (no aux head, transform_input on, fc = identity), random weights."""
    try:
        from torchvision.models import inception_v3
    except ImportError as e:
        raise UserError("the inception feature extractor needs torchvision: pip install torchvision") from e
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    net.fc = torch.nn.Identity()
    return net


@lru_cache(maxsize=2)
def _load_inception_cached(path: str, mtime_ns: int, size: int, device: str) -> tuple[torch.nn.Module, str]:
    try:
        state = load_tensors(path)
    except (ValueError, FileNotFoundError) as e:  # a pickle, or the file vanished
        raise UserError(str(e)) from e
    except Exception as e:  # safetensors' own error for a corrupt / non-safetensors file
        raise UserError(f"inception_weights {path} is not a readable safetensors file ({type(e).__name__}: "
                        f"{str(e).strip()[:120]}); pass a safetensors state_dict of torchvision's inception_v3") from e
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    net = build_inception()
    expected = set(net.state_dict())
    optional = {k for k in expected if k.endswith("num_batches_tracked")}  # absent from some converted files
    missing, unexpected = sorted(expected - optional - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UserError(f"inception_weights {path} does not match torchvision's inception_v3 "
                        f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, "
                        f"e.g. {unexpected[:3]}); pass a state_dict of torchvision.models.inception_v3")
    try:
        net.load_state_dict(state, strict=False)  # keys checked above
    except RuntimeError as e:  # shape mismatches
        first = str(e).strip().splitlines()[-1].strip()[:160]
        raise UserError(f"inception_weights {path} has tensors of the wrong shape ({first}); "
                        "pass a state_dict of torchvision.models.inception_v3") from e
    return net.eval().to(device), _sha256(Path(path))


def load_inception(weights: str | Path | None, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """(Inception-v3 pool3 feature network in eval mode, sha256 of the weights file)."""
    if weights is None or str(weights) == "":
        raise UserError(_NEEDS_WEIGHTS)
    path = Path(weights)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            load_tensors(path)  # raises the files pickle message
        except ValueError as e:
            raise UserError(str(e)) from e
    if not path.is_file():
        raise UserError(f"no inception weights file at {path}; {_NEEDS_WEIGHTS}")
    st = path.stat()
    return _load_inception_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, str(device))


class _Extractor:
    """Turns image batches into float64 feature rows."""

    def __init__(self, kind: str, inception_weights: Any = None, device: str = "cpu") -> None:
        if kind not in FEATURES:
            raise UserError(f"unknown features '{kind}'; choose one of: {', '.join(FEATURES)}")
        self.kind, self.device = kind, str(device)
        self.weights, self.sha256 = None, None
        if kind == "mini":
            from ...judges.minisd import load_judge
            self.net = load_judge(self.device)
            self.description = "mini (MiniSD judge, 128-d)"
            self.label = "mini"
        else:
            self.net, self.sha256 = load_inception(inception_weights, self.device)
            self.weights = str(inception_weights)
            self.description = f"inception-v3 pool3 2048-d ({self.weights})"
            self.label = "inception"

    def _prepare(self, names: list[str], images: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if self.kind == "mini":
            if torch.is_tensor(images):
                shapes = [tuple(images.shape[1:])] * len(names)
            else:
                shapes = [tuple(i.shape) for i in images]
            for name, shape in zip(names, shapes):
                if shape != (3, 64, 64):
                    raise UserError(f"features='mini' needs 64x64 RGB images (the MiniSD judge's input), but "
                                    f"{name} is {shape}; use features='inception' or resize to 64x64")
            batch = images if torch.is_tensor(images) else torch.stack(images)
            return batch.to(self.device).float() * 2 - 1
        if torch.is_tensor(images):
            batch = self._resize(images.to(self.device).float())
        else:
            batch = torch.cat([self._resize(img.to(self.device).float()[None]) for img in images])
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return (batch - mean) / std

    @staticmethod
    def _resize(batch: torch.Tensor) -> torch.Tensor:
        if tuple(batch.shape[-2:]) == (INCEPTION_SIZE, INCEPTION_SIZE):
            return batch
        shrink = batch.shape[-2] > INCEPTION_SIZE or batch.shape[-1] > INCEPTION_SIZE
        return F.interpolate(batch, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                             align_corners=False, antialias=shrink)

    @torch.no_grad()
    def __call__(self, source: _Source, batch_size: int) -> torch.Tensor:
        rows = []
        for names, images in source.batches(batch_size):
            x = self._prepare(names, images)
            if self.kind == "mini":
                f = self.net.features(x).mean(dim=(2, 3))
            else:
                f = self.net(x)
                if not torch.is_tensor(f):  # InceptionOutputs in train mode; eval gives the tensor
                    f = f[0]
            rows.append(f.detach().to("cpu", torch.float64))
        return torch.cat(rows)


def extract_features(images: Any, features: str = "mini", inception_weights: Any = None, batch_size: int = 50,
                     device: str = "cpu") -> torch.Tensor:
    """(N, d) float64 features of an (N, 3, H, W) [0, 1] tensor or a folder of images."""
    return _Extractor(features, inception_weights, device)(_Source(images, "images"), int(batch_size))


# ----------------------------------------------------------------------------- metrics

class _DistributionMetric(Metric):
    """Shared settings and feature plumbing of FID and KID."""

    def __init__(self, reference: Any = None, features: str | None = None, inception_weights: Any = None,
                 batch_size: int = 50, device: str = "cpu", **settings: Any) -> None:
        super().__init__(reference=reference, features=features, inception_weights=inception_weights,
                         batch_size=batch_size, device=device, **settings)
        if reference is None:
            raise UserError(f"{self.name} needs a reference set: pass reference=<folder of png/jpg/jpeg/webp images> "
                            "or an (N, 3, H, W) tensor in [0, 1]")
        if features is not None and features not in FEATURES:
            raise UserError(f"unknown features '{features}' for {self.name}; choose one of: {', '.join(FEATURES)}")
        self.reference = _Source(reference, "reference")
        self.features = features
        self.inception_weights = inception_weights
        self.batch_size = int(batch_size)
        self.device = str(device)
        if self.batch_size < 1:
            raise UserError(f"{self.name} batch_size must be >= 1, got {batch_size}; pass a positive batch_size")
        self._reference_cache: dict[tuple, torch.Tensor] = {}

    def judge(self) -> dict[str, Any]:
        from ...harness import judge_file
        weights = self.inception_weights if isinstance(self.inception_weights, (str, Path)) else None
        return judge_file(f"{self.name}-features", weights, features=self.features,
                          reference=str(self.settings.get("reference")) if isinstance(self.settings.get("reference"), (str, Path)) else "tensor")

    def check(self) -> None:
        """Open every reference file (cheaply, without decoding) and the weights file before any
        image is generated, so a broken reference set fails in seconds, not after generation."""
        from PIL import Image
        for path in self.reference.files or []:
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as e:
                raise UserError(f"cannot read reference image {path} ({type(e).__name__}); "
                                "remove or replace that file") from None
        if self.features == "inception" or self.inception_weights is not None:
            _Extractor("inception", self.inception_weights, self.device)

    def _features(self, images: torch.Tensor) -> tuple[_Extractor, torch.Tensor, torch.Tensor]:
        generated = _Source(images, "images", allow_folder=False)
        kind = self.features
        if kind is None:
            kind = "mini" if tuple(generated.tensor.shape[-2:]) == (64, 64) else "inception"
        extractor = _Extractor(kind, self.inception_weights, self.device)
        key = (kind, extractor.sha256)
        if key not in self._reference_cache:
            self._reference_cache[key] = extractor(self.reference, self.batch_size)
        return extractor, extractor(generated, self.batch_size), self._reference_cache[key]

    def _protocol(self, extractor: _Extractor) -> dict[str, Any]:
        proto: dict[str, Any] = {
            "reported_as": f"{self.name.upper()}-{extractor.label}",
            "features": extractor.description,
            "reference": str(self.reference.folder) if self.reference.folder is not None else "in-memory tensor",
        }
        if extractor.kind == "inception":
            proto.update(inception_weights=extractor.weights, inception_weights_sha256=extractor.sha256,
                         preprocessing=(f"bilinear resize to {INCEPTION_SIZE}x{INCEPTION_SIZE} (antialiased when "
                                        "shrinking, no crop), ImageNet mean/std normalisation, torchvision "
                                        "transform_input=True"),
                         comparable="only with runs using the same weights file (sha256 above)")
        else:
            proto.update(preprocessing="64x64 images, x * 2 - 1, judge conv stack, global average pool",
                         comparable="only with other FID-mini / KID-mini numbers")
        return proto


@register_metric
class FID(_DistributionMetric):
    name = "fid"

    def compute(self, images: torch.Tensor, prompts: list[str], expected: list[dict]) -> dict[str, Any]:
        extractor, gen, ref = self._features(images)
        for what, f in (("generated images", gen), ("reference images", ref)):
            if f.shape[0] < 2:
                raise UserError(f"fid needs at least 2 {what}, got {f.shape[0]}; use more images "
                                "(FID is only meaningful with thousands)")
        value = frechet_distance(*feature_stats(gen), *feature_stats(ref))
        protocol = self._protocol(extractor)
        protocol["definition"] = ("|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), float64, covariance "
                                  "ddof=1, sqrt via eigh of S1^(1/2) S2 S1^(1/2); biased upward at small N, "
                                  "compare only at equal N")
        return {"summary": {"fid": value, "features": extractor.description, "n_images": int(gen.shape[0]),
                            "n_reference": int(ref.shape[0])},
                "per_image": [], "protocol": protocol}


@register_metric
class KID(_DistributionMetric):
    name = "kid"

    def __init__(self, reference: Any = None, features: str | None = None, inception_weights: Any = None,
                 batch_size: int = 50, device: str = "cpu", subsets: int = 100, subset_size: int = 1000,
                 seed: int = 0, **settings: Any) -> None:
        super().__init__(reference=reference, features=features, inception_weights=inception_weights,
                         batch_size=batch_size, device=device, subsets=subsets, subset_size=subset_size,
                         seed=seed, **settings)
        self.subsets, self.subset_size, self.seed = int(subsets), int(subset_size), int(seed)
        if self.subsets < 1 or self.subset_size < 2:
            raise UserError(f"kid needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")

    def compute(self, images: torch.Tensor, prompts: list[str], expected: list[dict]) -> dict[str, Any]:
        extractor, gen, ref = self._features(images)
        size = min(self.subset_size, gen.shape[0], ref.shape[0])
        if size < 2:
            raise UserError(f"kid needs at least 2 generated and 2 reference images, got {gen.shape[0]} and "
                            f"{ref.shape[0]}; use more images")
        mean, std = kid(gen, ref, subsets=self.subsets, subset_size=size, seed=self.seed)
        protocol = self._protocol(extractor)
        protocol.update(definition=("unbiased MMD^2, kernel (x.y / d + 1)^3; mean and std (ddof=0) over subsets "
                                    "drawn without replacement"),
                        subsets=self.subsets, subset_size=int(size), seed=self.seed)
        return {"summary": {"kid_mean": mean, "kid_std": std, "features": extractor.description,
                            "n_images": int(gen.shape[0]), "n_reference": int(ref.shape[0]),
                            "subsets": self.subsets, "subset_size": int(size)},
                "per_image": [], "protocol": protocol}
