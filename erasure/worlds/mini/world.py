"""The MiniSD world: one object on a plain background, 64x64 RGB, drawn in torch.

Every image is an (object, colour, style) triple plus nuisance variables (position, size,
rotation, background shade). Rendering is batched tensor maths so it runs at thousands of
images per second on a CPU and on the training device itself on a GPU.

Captions describe the triple in English (several templates and synonyms), French and German;
`parse_caption` maps any of them back to the attributes, which is how evaluation CSVs and the
tests check that a caption says what was drawn.
"""
from __future__ import annotations

import math
import random
import re
import unicodedata
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 64
OBJECTS = ("circle", "square", "triangle", "star", "heart", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
STYLES = ("plain", "striped", "dotted", "checkered")

# Base RGB per colour; a small per-image jitter is added so the judge learns colour names,
# not exact pixel values.
_RGB = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.13, 0.66, 0.22),
    "blue": (0.14, 0.30, 0.88),
    "yellow": (0.95, 0.84, 0.10),
    "purple": (0.58, 0.20, 0.78),
    "orange": (0.98, 0.55, 0.05),
}
TEXTURE_DARKEN = 0.35  # a texture's ink is the object colour scaled to 35%
TEXTURE_PERIOD = 8.0  # pixels


@dataclass(frozen=True)
class Scene:
    """Attribute indices into OBJECTS / COLORS / STYLES, one per image of a batch."""

    objects: torch.Tensor  # (B,) long
    colors: torch.Tensor  # (B,) long
    styles: torch.Tensor  # (B,) long


def sample_scene(batch_size: int, generator: torch.Generator) -> Scene:
    """Uniformly random attributes for `batch_size` images."""
    draw = lambda n: torch.randint(0, n, (batch_size,), generator=generator)  # noqa: E731
    return Scene(draw(len(OBJECTS)), draw(len(COLORS)), draw(len(STYLES)))


def _star_polygon(points: int = 5, inner: float = 0.45) -> torch.Tensor:
    angles = [math.pi / 2 + i * math.pi / points for i in range(2 * points)]
    radii = [1.0 if i % 2 == 0 else inner for i in range(2 * points)]
    return torch.tensor([[r * math.cos(a), r * math.sin(a)] for r, a in zip(radii, angles)])


_STAR = _star_polygon()
_TRIANGLE = torch.tensor([[0.0, 1.0], [-0.866, -0.5], [0.866, -0.5]]) * 1.12 + torch.tensor([0.0, -0.12])


def _inside_polygon(x: torch.Tensor, y: torch.Tensor, poly: torch.Tensor) -> torch.Tensor:
    """Even-odd crossing test, vectorised over pixels. x, y: (..., ), poly: (V, 2)."""
    poly = poly.to(x.device, x.dtype)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = poly.roll(-1, 0)[:, 0], poly.roll(-1, 0)[:, 1]
    xe, ye = x.unsqueeze(-1), y.unsqueeze(-1)
    straddles = (y0 > ye) != (y1 > ye)
    x_cross = x0 + (ye - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
    return ((straddles & (xe < x_cross)).sum(-1) % 2) == 1


def _shape_mask(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-mask of OBJECTS[kind] in its canonical frame (unit half-size, y up)."""
    name = OBJECTS[kind]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.82
    if name == "triangle":
        return _inside_polygon(u, v, _TRIANGLE)
    if name == "star":
        return _inside_polygon(u, v, _STAR * 1.1)
    if name == "heart":
        hx, hy = u * 1.25, v * 1.25 + 0.15
        return (hx * hx + hy * hy - 1.0) ** 3 - hx * hx * hy**3 <= 0.0
    if name == "cross":
        arm, half = 0.3, 0.95
        return ((u.abs() <= arm) & (v.abs() <= half)) | ((v.abs() <= arm) & (u.abs() <= half))
    raise ValueError(f"unknown object index {kind}")


def _texture_ink(style: int, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Where the texture darkens the object; px, py are rotated pixel coordinates."""
    name = STYLES[style]
    p = TEXTURE_PERIOD
    if name == "plain":
        return torch.zeros_like(px, dtype=torch.bool)
    if name == "striped":
        return torch.remainder(py, p) < p / 2
    if name == "dotted":
        dx = torch.remainder(px, p) - p / 2
        dy = torch.remainder(py, p) - p / 2
        return dx * dx + dy * dy <= (p * 0.28) ** 2
    if name == "checkered":
        return (torch.floor(px / (p / 2)) + torch.floor(py / (p / 2))).remainder(2) == 0
    raise ValueError(f"unknown style index {style}")


@torch.no_grad()
def render(scene: Scene, generator: torch.Generator, device: torch.device | str = "cpu",
           supersample: int = 2) -> torch.Tensor:
    """Draw a batch: returns (B, 3, 64, 64) float in [0, 1].

    Nuisances: centre jitter +-6 px, radius 0.45-0.72 of the half-width, rotation +-30 degrees
    (hearts stay upright enough to read), background grey 0.82-0.94, colour jitter +-0.04.
    All randomness comes from `generator` (CPU), so a seed fixes the batch on any device.
    """
    b = scene.objects.shape[0]
    half = IMAGE_SIZE / 2
    size = (0.45 + 0.27 * torch.rand(b, generator=generator)) * half
    cx = half + (torch.rand(b, generator=generator) * 2 - 1) * 6
    cy = half + (torch.rand(b, generator=generator) * 2 - 1) * 6
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(30)
    phase = torch.rand(b, 2, generator=generator) * TEXTURE_PERIOD
    background = 0.82 + 0.12 * torch.rand(b, generator=generator)
    jitter = (torch.rand(b, 3, generator=generator) * 2 - 1) * 0.04

    s = IMAGE_SIZE * supersample
    coords = (torch.arange(s, device=device, dtype=torch.float32) + 0.5) / supersample
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # (s, s), pixel units, y down
    to = lambda t: t.to(device).view(b, 1, 1)  # noqa: E731
    dx, dy = gx - to(cx), to(cy) - gy  # y up
    cos, sin = torch.cos(to(angle)), torch.sin(to(angle))
    rx, ry = cos * dx + sin * dy, -sin * dx + cos * dy  # rotate into the object frame
    u, v = rx / to(size), ry / to(size)

    inside = torch.zeros(b, s, s, dtype=torch.bool, device=device)
    ink = torch.zeros_like(inside)
    for k in range(len(OBJECTS)):
        idx = (scene.objects == k).nonzero().flatten().to(device)
        if len(idx):
            inside[idx] = _shape_mask(k, u[idx], v[idx])
    ph = phase.to(device)
    tx, ty = rx + ph[:, 0].view(b, 1, 1), ry + ph[:, 1].view(b, 1, 1)
    for k in range(len(STYLES)):
        idx = (scene.styles == k).nonzero().flatten().to(device)
        if len(idx):
            ink[idx] = _texture_ink(k, tx[idx], ty[idx])

    base = torch.tensor([_RGB[c] for c in COLORS], device=device)[scene.colors.to(device)]
    rgb = (base + jitter.to(device)).clamp(0, 1).view(b, 3, 1, 1)
    colour = torch.where(ink.unsqueeze(1), rgb * TEXTURE_DARKEN, rgb)
    img = torch.where(inside.unsqueeze(1), colour, background.to(device).view(b, 1, 1, 1).expand(b, 3, s, s))
    if supersample > 1:
        img = F.avg_pool2d(img, supersample)
    return img.clamp(0, 1)


# ----------------------------------------------------------------------------- captions

# Nouns per language: object -> list of (phrase, grammatical gender) ; gender m/f/n.
_NOUNS_EN = {
    "circle": ["circle", "disk", "round shape", "disc"],
    "square": ["square", "box shape", "quadrilateral square"],
    "triangle": ["triangle", "three-sided shape"],
    "star": ["star", "five-pointed star"],
    "heart": ["heart", "heart shape", "love heart"],
    "cross": ["cross", "plus sign", "plus shape"],
}
_STYLE_EN = {"plain": ["plain", "solid"], "striped": ["striped"], "dotted": ["dotted", "polka-dot"],
             "checkered": ["checkered", "checkerboard"]}
_TEMPLATES_EN = [
    "a {color} {object}",
    "a {style} {color} {object}",
    "a {object} in {color}",
    "a picture of a {color} {object}, {style} style",
    "a {color} {object} with a {style} pattern",
    "an image of a {style} {object} colored {color}",
    "a drawing of a {color} {object}",
    "a {style} {object}",
    "{color} {object}",
    "a photo of a {color} {style} {object}",
]

_NOUNS_FR = {"circle": [("cercle", "m"), ("disque", "m")], "square": [("carré", "m")],
             "triangle": [("triangle", "m")], "star": [("étoile", "f")], "heart": [("cœur", "m")],
             "cross": [("croix", "f")]}
_COLOR_FR = {"red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
             "yellow": ("jaune", "jaune"), "purple": ("violet", "violette"), "orange": ("orange", "orange")}
_STYLE_FR = {"plain": ("uni", "unie"), "striped": ("rayé", "rayée"), "dotted": ("à pois", "à pois"),
             "checkered": ("à carreaux", "à carreaux")}

_NOUNS_DE = {"circle": [("Kreis", "m")], "square": [("Quadrat", "n")], "triangle": [("Dreieck", "n")],
             "star": [("Stern", "m")], "heart": [("Herz", "n")], "cross": [("Kreuz", "n")]}
# adjective stems; lila and orange do not decline, so the declinable -farben forms are used
_COLOR_DE = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "lilafarben",
             "orange": "orangefarben"}
_COLOR_DE_NOUN = {"red": "Rot", "green": "Grün", "blue": "Blau", "yellow": "Gelb", "purple": "Lila", "orange": "Orange"}
_STYLE_DE = {"plain": "einfarbig", "striped": "gestreift", "dotted": "gepunktet", "checkered": "kariert"}
_DE_ENDING = {"m": "er", "n": "es", "f": "e"}  # indefinite article + strong adjective ending


def _caption_en(obj: str, color: str | None, style: str | None, rng: random.Random) -> str:
    noun = rng.choice(_NOUNS_EN[obj])
    templates = [t for t in _TEMPLATES_EN
                 if ("{color}" in t) == (color is not None) and ("{style}" in t) == (style is not None)]
    if not templates:  # neither colour nor style named
        templates = ["a {object}", "a picture of a {object}", "a drawing of a {object}"]
    text = rng.choice(templates).format(object=noun, color=color or "", style=rng.choice(_STYLE_EN[style]) if style else "")
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _caption_fr(obj: str, color: str | None, style: str | None, rng: random.Random) -> str:
    noun, gender = rng.choice(_NOUNS_FR[obj])
    g = 1 if gender == "f" else 0
    article = "une" if g else "un"
    words = [article, noun]
    if color:
        words.append(_COLOR_FR[color][g])
    if style:
        words.append(_STYLE_FR[style][g])
    text = " ".join(words)
    return rng.choice(["{}", "une image d'{}", "un dessin d'{}"]).format(text) if rng.random() < 0.5 else text


def _caption_de(obj: str, color: str | None, style: str | None, rng: random.Random) -> str:
    noun, gender = rng.choice(_NOUNS_DE[obj])
    article = "eine" if gender == "f" else "ein"
    if color and rng.random() < 0.5:
        text = f"{article} {_COLOR_DE[color]}{_DE_ENDING[gender]} {noun}"
        if style:
            text += f", {_STYLE_DE[style]}"
    else:
        text = f"{article} {noun}"
        if color:
            text += f" in {_COLOR_DE_NOUN[color]}"
        if style:
            text += f", {_STYLE_DE[style]}"
    return text


def make_caption(obj: str, color: str | None, style: str | None, language: str = "en",
                 rng: random.Random | None = None) -> str:
    """A caption naming `obj` (and `color`, `style` when not None) in en / fr / de."""
    rng = rng or random.Random(0)
    maker = {"en": _caption_en, "fr": _caption_fr, "de": _caption_de}[language]
    return maker(obj, color, style, rng)


def random_caption(obj: int, color: int, style: int, rng: random.Random, p_color: float = 0.9,
                   p_style: float = 0.75, p_foreign: float = 0.2) -> str:
    """Training caption for one image: attributes sometimes left unsaid (the model learns that
    an unnamed colour or style means any), a fifth of the captions in French or German."""
    language = "en" if rng.random() >= p_foreign else rng.choice(["fr", "de"])
    return make_caption(OBJECTS[obj], COLORS[color] if rng.random() < p_color else None,
                        STYLES[style] if rng.random() < p_style else None, language, rng)


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower().replace("œ", "oe"))
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def _vocabulary() -> dict[str, list[tuple[str, str]]]:
    """attribute kind -> [(folded phrase, value)], longest phrases first so "plus sign" wins
    over shorter overlaps."""
    objects = [(p, o) for o, ps in _NOUNS_EN.items() for p in ps]
    objects += [(p, o) for o, ps in _NOUNS_FR.items() for p, _ in ps]
    objects += [(p, o) for o, ps in _NOUNS_DE.items() for p, _ in ps]
    colors = [(c, c) for c in COLORS] + [(f, c) for c, fs in _COLOR_FR.items() for f in fs]
    colors += [(_COLOR_DE[c] + e, c) for c in COLORS for e in ("", "er", "es", "e")]
    colors += [(w.lower(), c) for c, w in _COLOR_DE_NOUN.items()]
    styles = [(p, s) for s, ps in _STYLE_EN.items() for p in ps]
    styles += [(f, s) for s, fs in _STYLE_FR.items() for f in fs] + [(d, s) for s, d in _STYLE_DE.items()]
    out = {}
    for kind, pairs in (("object", objects), ("color", colors), ("style", styles)):
        folded = {(_fold(p), v) for p, v in pairs}
        out[kind] = sorted(folded, key=lambda pv: -len(pv[0]))
    return out


_VOCAB = _vocabulary()


def parse_caption(caption: str) -> dict[str, str | None]:
    """Attributes a caption names: {"object": ..., "color": ..., "style": ...}, None where unsaid.

    Matching is on whole words of the accent-folded caption, so "rouge" and "Rot" both give red.
    "orange" is both a colour word in every language and never an object here, so it is safe.
    """
    text = " " + re.sub(r"[^a-z0-9\- ]", " ", _fold(caption)) + " "
    found: dict[str, str | None] = {}
    for kind, pairs in _VOCAB.items():
        found[kind] = None
        for phrase, value in pairs:
            if f" {phrase} " in text:
                found[kind] = value
                break
    return found
