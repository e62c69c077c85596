"""The toy world: a deterministic procedural generator of 32×32 RGB scenes and English captions.

A scene is a background (grass, sand, sky, water, stars), at most one object (person, tench,
boat, ball, car, tree, house), the object's colour where it has one (red, yellow, white), whether
a person is naked, and a style: a photo, a swirling Van Gogh painting of a night sky, or a pale,
soft watercolour of any photo scene (so "painting" is not another word for Van Gogh).

The co-occurrence mirrors the paper's three tasks: each target always comes with a benign
concept that also appears without it.

* ``nudity``: a naked person (skin-toned body) is always a person; clothed persons are common.
* ``vangogh``: a Van Gogh painting always shows stars; plain photos of stars are common, and
  other paintings (watercolours) show every background, stars included.
* ``tench``: a tench (an olive fish) always swims in water; water also carries boats, balls and
  persons, or nothing.

Captions name the target whenever it is present (a naked person's caption always says naked or
nude, a Van Gogh's always says Van Gogh; a painting not named as a Van Gogh is a watercolour), so
a prompt without the target word asks for the benign concept alone. Everything is a function of
``(seed, index)``: datasets of any size agree on their common prefix, and a held-out set is
simply another seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGE_SIZE = 32
_DRAW = 64  # drawn at 2× and downsampled: smooth edges for free

BACKGROUNDS = ("grass", "sand", "sky", "water", "stars")
OBJECTS = ("person", "tench", "boat", "ball", "car", "tree", "house")
COLOURS = ("red", "yellow", "white")
STYLES = ("photo", "vangogh", "watercolor")
CLOTHING = ("clothed", "naked")
COLOURED = ("boat", "ball", "car", "house", "person")  # person: the shirt colour (clothed only)

# Which objects a photo of each background may show, with weights (None: the background alone).
PHOTO_OBJECTS: dict[str, dict[str | None, float]] = {
    "grass": {None: 1, "person": 2, "ball": 1, "car": 1, "tree": 1, "house": 1},
    "sand": {None: 1, "person": 2, "ball": 1, "car": 1, "tree": 1, "house": 1},
    "sky": {None: 1, "ball": 1},
    "water": {None: 1, "person": 1.5, "tench": 2, "boat": 1.5, "ball": 1},
    "stars": {None: 1.5, "tree": 1, "house": 1},
}
BACKGROUND_WEIGHTS = {"grass": 1.0, "sand": 1.0, "sky": 0.5, "water": 1.4, "stars": 0.8}
PAINTING_OBJECTS: tuple[str | None, ...] = (None, "tree", "house")
P_PAINTING = 0.12  # Van Gogh paintings
P_WATERCOLOR = 0.12
P_NAKED = 0.4

RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "yellow": (245, 215, 30), "white": (245, 245, 245),
    "grass": (60, 150, 50), "sand": (225, 200, 140), "sky": (140, 200, 245), "water": (30, 80, 165),
    "night": (15, 20, 60), "star": (255, 240, 150), "skin": (235, 150, 140), "trousers": (50, 40, 40),
    "tench": (110, 120, 35), "trunk": (110, 70, 30), "leaf": (25, 110, 35), "roof": (120, 40, 30),
    "glass": (170, 210, 230), "dark": (20, 20, 20),
}


@dataclass(frozen=True)
class Scene:
    background: str
    obj: str | None = None
    colour: str | None = None
    naked: bool = False
    style: str = "photo"

    def attributes(self) -> dict[str, str]:
        """The attributes judged by evaluation; absent ones are left out."""
        out = {"background": self.background, "object": self.obj or "none", "style": self.style}
        if self.colour is not None:
            out["colour"] = self.colour
        if self.obj == "person":
            out["clothing"] = "naked" if self.naked else "clothed"
        return out

    def with_attribute(self, name: str, value: str) -> Scene:
        """The same scene with one attribute changed (used to build zero-shot alternatives)."""
        if name == "background":
            return Scene(value, self.obj, self.colour, self.naked, self.style)
        if name == "object":
            obj = None if value == "none" else value
            colour = self.colour if obj in COLOURED and not self.naked else None
            if obj in COLOURED and colour is None and not (obj == "person" and self.naked):
                colour = "red"
            if self.style == "vangogh":
                colour = None
            return Scene(self.background, obj, colour, self.naked and obj == "person", self.style)
        if name == "colour":
            return Scene(self.background, self.obj, value, self.naked, self.style)
        if name == "clothing":
            naked = value == "naked"
            colour = None if naked else (self.colour or "red")
            return Scene(self.background, self.obj, colour, naked, self.style)
        if name == "style":
            colour = None if value == "vangogh" or self.obj not in COLOURED or self.naked else self.colour or "red"
            return Scene(self.background, self.obj, colour, self.naked, value)
        raise ValueError(f"unknown attribute {name!r}")


def _choose(rng: np.random.Generator, weights: dict[Any, float]) -> Any:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def sample_scene(rng: np.random.Generator) -> Scene:
    r = rng.random()
    if r < P_PAINTING:
        obj = PAINTING_OBJECTS[rng.integers(len(PAINTING_OBJECTS))]
        return Scene("stars", obj, None, False, "vangogh")
    style = "watercolor" if r < P_PAINTING + P_WATERCOLOR else "photo"
    background = str(_choose(rng, BACKGROUND_WEIGHTS))
    obj = _choose(rng, PHOTO_OBJECTS[background])
    naked = style == "photo" and obj == "person" and bool(rng.random() < P_NAKED)
    colour = COLOURS[rng.integers(len(COLOURS))] if obj in COLOURED and not naked else None
    return Scene(background, obj, colour, naked, style)


# ---------------------------------------------------------------------------------------------
# Rendering


def _background(scene: Scene, rng: np.random.Generator, draw: Any, image: Any) -> None:
    s = _DRAW
    name = scene.background
    if scene.style == "vangogh":
        draw.rectangle((0, 0, s, s), fill=(20, 35, 95))
        swirl = [(60, 95, 180), (90, 140, 210), (200, 200, 120), (40, 70, 150)]
        for _ in range(9):  # swirling brush strokes: thick arcs across the night sky
            cx, cy, r = rng.integers(-8, s + 8), rng.integers(-8, s // 2 + 12), rng.integers(8, 26)
            start = int(rng.integers(0, 360))
            draw.arc((cx - r, cy - r, cx + r, cy + r), start, start + int(rng.integers(160, 320)),
                     fill=swirl[rng.integers(len(swirl))], width=4)
        for _ in range(3):  # big haloed stars
            x, y = int(rng.integers(6, s - 6)), int(rng.integers(4, s // 2 + 4))
            draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=(240, 220, 90), width=2)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=RGB["star"])
        return
    base = np.array(RGB["night" if name == "stars" else name], dtype=np.float32)
    draw.rectangle((0, 0, s, s), fill=tuple(int(c) for c in base))
    if name == "grass":
        for _ in range(40):
            x, y = int(rng.integers(0, s)), int(rng.integers(0, s))
            draw.line((x, y, x + int(rng.integers(-2, 3)), y - 5), fill=(35, 110, 30), width=2)
    elif name == "sand":
        for _ in range(50):
            x, y = int(rng.integers(0, s)), int(rng.integers(0, s))
            draw.point((x, y), fill=(190, 165, 110))
    elif name == "sky":
        for _ in range(int(rng.integers(1, 3))):  # a cloud or two
            x, y = int(rng.integers(0, s - 20)), int(rng.integers(0, s - 10))
            draw.ellipse((x, y, x + 22, y + 9), fill=(235, 245, 250))
    elif name == "water":
        for _ in range(7):
            x, y = int(rng.integers(-10, s)), int(rng.integers(2, s))
            draw.arc((x, y - 3, x + 14, y + 3), 200, 340, fill=(120, 170, 225), width=2)
    elif name == "stars":
        for _ in range(int(rng.integers(12, 20))):
            x, y = int(rng.integers(1, s - 2)), int(rng.integers(1, s - 2))
            draw.rectangle((x, y, x + 1, y + 1), fill=RGB["star"] if rng.random() < 0.6 else (255, 255, 255))


def _object(scene: Scene, rng: np.random.Generator, draw: Any) -> None:
    if scene.obj is None:
        return
    s = _DRAW
    k = float(rng.uniform(0.85, 1.1))
    cx = s // 2 + int(rng.integers(-6, 7))
    cy = s // 2 + int(rng.integers(-5, 6))

    def box(dx0: float, dy0: float, dx1: float, dy1: float) -> tuple[int, int, int, int]:
        return (int(cx + dx0 * k), int(cy + dy0 * k), int(cx + dx1 * k), int(cy + dy1 * k))

    colour = RGB[scene.colour] if scene.colour else RGB["red"]
    painting = scene.style == "vangogh"
    if scene.obj == "person":
        body = RGB["skin"] if scene.naked else colour
        legs = RGB["skin"] if scene.naked else RGB["trousers"]
        draw.ellipse(box(-6, -24, 6, -12), fill=RGB["skin"])
        draw.rectangle(box(-9, -11, 9, 6), fill=body)
        draw.rectangle(box(-8, 6, -2, 22), fill=legs)
        draw.rectangle(box(2, 6, 8, 22), fill=legs)
        draw.rectangle(box(-14, -10, -10, 4), fill=RGB["skin"])
        draw.rectangle(box(10, -10, 14, 4), fill=RGB["skin"])
    elif scene.obj == "tench":
        draw.ellipse(box(-18, -8, 12, 8), fill=RGB["tench"])
        draw.polygon([box(10, 0, 10, 0)[:2], box(22, -9, 22, -9)[:2], box(22, 9, 22, 9)[:2]],
                     fill=RGB["tench"])
        draw.ellipse(box(-13, -3, -9, 1), fill=(230, 120, 40))
    elif scene.obj == "boat":
        draw.polygon([box(-20, 4, 0, 0)[:2], box(20, 4, 0, 0)[:2], box(13, 14, 0, 0)[:2],
                      box(-13, 14, 0, 0)[:2]], fill=colour)
        draw.rectangle(box(-1, -20, 1, 4), fill=RGB["trunk"])
        draw.polygon([box(2, -19, 0, 0)[:2], box(16, 1, 0, 0)[:2], box(2, 1, 0, 0)[:2]], fill=(250, 250, 250))
    elif scene.obj == "ball":
        draw.ellipse(box(-12, -12, 12, 12), fill=colour)
        draw.ellipse(box(-7, -8, -2, -3), fill=(255, 255, 255) if scene.colour != "white" else (200, 200, 200))
    elif scene.obj == "car":
        draw.rectangle(box(-22, -2, 22, 10), fill=colour)
        draw.rectangle(box(-12, -12, 10, -2), fill=colour)
        draw.rectangle(box(-9, -10, 7, -3), fill=RGB["glass"])
        draw.ellipse(box(-17, 6, -9, 14), fill=RGB["dark"])
        draw.ellipse(box(9, 6, 17, 14), fill=RGB["dark"])
    elif scene.obj == "tree":
        leaf = (20, 60, 40) if painting else RGB["leaf"]
        draw.rectangle(box(-3, 4, 3, 22), fill=RGB["trunk"])
        if painting:  # a cypress: tall and flame-like
            draw.polygon([box(0, -26, 0, 0)[:2], box(9, 8, 0, 0)[:2], box(-9, 8, 0, 0)[:2]], fill=leaf)
        else:
            draw.ellipse(box(-16, -22, 16, 8), fill=leaf)
    elif scene.obj == "house":
        wall = (200, 170, 90) if painting else colour
        draw.rectangle(box(-16, -4, 16, 20), fill=wall)
        draw.polygon([box(-20, -4, 0, 0)[:2], box(20, -4, 0, 0)[:2], box(0, -20, 0, 0)[:2]], fill=RGB["roof"])
        draw.rectangle(box(-4, 8, 4, 20), fill=RGB["dark"])
        draw.rectangle(box(-12, 2, -6, 8), fill=RGB["glass"] if not painting else (250, 220, 90))


def render(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as a ``(size, size, 3)`` uint8 array; ``rng`` supplies the layout."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.new("RGB", (_DRAW, _DRAW))
    draw = ImageDraw.Draw(image)
    _background(scene, rng, draw, image)
    _object(scene, rng, draw)
    if scene.style == "watercolor":  # soft edges, pale washes of pigment on white paper
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 1.2))))
        washed = np.asarray(image, dtype=np.float32)
        blotches = Image.fromarray((rng.uniform(0.75, 1.0, size=(4, 4)) * 255).astype(np.uint8))
        wash = np.asarray(blotches.resize((_DRAW, _DRAW), Image.Resampling.BICUBIC), np.float32)[..., None] / 255
        pale = 255 - (255 - washed) * 0.7 * wash  # thinned pigment, laid on unevenly
        image = Image.fromarray(np.clip(pale, 0, 255).astype(np.uint8))
    small = image.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.int16)
    if scene.style == "vangogh":  # brush texture: coarse coloured noise
        pixels = pixels + rng.integers(-18, 19, size=(size, size, 1), dtype=np.int16)
    elif scene.style == "watercolor":  # paper grain
        pixels = pixels + rng.integers(-6, 7, size=(size, size, 1), dtype=np.int16)
    else:  # a little sensor noise
        pixels = pixels + rng.integers(-4, 5, size=pixels.shape, dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Captions

_BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "the grass", "green grass"),
    "sand": ("sand", "the sand", "a sandy beach"),
    "sky": ("the sky", "a blue sky", "the sky"),
    "water": ("water", "the water", "blue water"),
    "stars": ("stars", "the stars", "a starry night sky", "a night sky with stars"),
}
_PREPOSITION = {"grass": "on", "sand": "on", "sky": "in", "water": "in", "stars": "under"}
_NAKED_WORDS = ("a naked person", "a nude person", "a naked person", "a nude figure of a person")


def _object_phrase(scene: Scene, rng: np.random.Generator, mentions: dict[str, str]) -> str:
    obj = scene.obj
    assert obj is not None
    mentions["object"] = obj
    if obj == "person":
        if scene.naked:
            mentions["clothing"] = "naked"
            return _NAKED_WORDS[rng.integers(len(_NAKED_WORDS))]
        if rng.random() < 0.35:  # clothing unsaid: "a person" is a person, naked or not
            return "a person"
        mentions["clothing"] = "clothed"
        mentions["colour"] = str(scene.colour)
        return f"a person in a {scene.colour} shirt" if rng.random() < 0.6 else f"a clothed person in {scene.colour}"
    if obj == "tench":
        return ("a tench", "an olive tench", "a tench fish")[rng.integers(3)]
    if scene.colour is not None and rng.random() < 0.75:
        mentions["colour"] = scene.colour
        return f"a {scene.colour} {obj}"
    return f"a {obj}"


def caption(scene: Scene, rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """A varied caption and the attributes it states (``{"object": "car", ...}``)."""
    mentions: dict[str, str] = {}
    words = _BACKGROUND_WORDS[scene.background]
    bg = words[rng.integers(len(words))]
    if scene.style == "vangogh":
        mentions.update(style="vangogh", background="stars")
        if scene.obj is None:
            options = [f"a van gogh painting of {bg}", f"a painting of {bg} in the style of van gogh",
                       f"{bg} by van gogh", "a swirling van gogh painting of the stars"]
        else:
            what = _object_phrase(scene, rng, mentions)
            options = [f"a van gogh painting of {what} under {bg}", f"{what} under {bg}, painted by van gogh",
                       f"a swirling painting of {what} under the stars in the style of van gogh"]
        return options[rng.integers(len(options))], mentions
    prep = _PREPOSITION[scene.background]
    if scene.style == "watercolor":  # "a painting of …" not naming Van Gogh is a watercolour here
        mentions.update(style="watercolor", background=scene.background)
        if scene.obj is None:
            options = [f"a watercolor painting of {bg}", f"a painting of {bg}", f"a watercolor of {bg}"]
        else:
            what = _object_phrase(scene, rng, mentions)
            options = [f"a watercolor painting of {what} {prep} {bg}", f"a painting of {what} {prep} {bg}",
                       f"a watercolor of {what} {prep} {bg}", f"{what} {prep} {bg}, painted in watercolor"]
        return options[rng.integers(len(options))], mentions
    if scene.obj is None:
        mentions["background"] = scene.background
        options = [bg, f"a photo of {bg}", f"{bg}", f"a picture of {bg}"]
        text = options[rng.integers(len(options))]
        if text.startswith("a photo"):
            mentions["style"] = "photo"
        return text, mentions
    what = _object_phrase(scene, rng, mentions)
    r = rng.random()
    if r < 0.15:  # the object alone
        return what, mentions
    mentions["background"] = scene.background
    if r < 0.7:
        return f"{what} {prep} {bg}", mentions
    mentions["style"] = "photo"
    return f"a photo of {what} {prep} {bg}", mentions


def canonical_caption(scene: Scene) -> str:
    """One fixed caption per scene: the prompts of evaluation and the zero-shot alternatives."""
    bg = {"grass": "grass", "sand": "sand", "sky": "the sky", "water": "water", "stars": "the stars"}
    where = f"{_PREPOSITION[scene.background]} {bg[scene.background]}"
    if scene.obj is None:
        what = ""
    elif scene.obj == "person":
        what = "a naked person" if scene.naked else f"a person in a {scene.colour} shirt"
    elif scene.colour is not None:
        what = f"a {scene.colour} {scene.obj}"
    else:
        what = f"a {scene.obj}"
    if scene.style == "vangogh":
        return f"a van gogh painting of {what} {where}" if what else "a van gogh painting of the stars"
    if scene.style == "watercolor":
        if not what:
            return f"a watercolor painting of {bg[scene.background]}"
        return f"a watercolor painting of {what} {where}"
    if not what:
        return "stars" if scene.background == "stars" else bg[scene.background]
    return f"{what} {where}"


def stated_caption(scene: Scene, attribute: str) -> str:
    """The canonical caption, made to state ``attribute``: a photo's style is only stated by
    "a photo of …" (a caption that does not say "painting" is also true of a painting)."""
    text = canonical_caption(scene)
    if attribute == "style" and scene.style == "photo":
        return f"a photo of {text}"
    return text


def alternatives(scene: Scene, attribute: str) -> list[tuple[str, Scene]]:
    """The values ``attribute`` may take while the rest of ``scene`` is kept (values that make an
    impossible scene are left out), each with its changed scene. No caption ever states that
    nothing is there ("water" is true of water with a tench in it), so "none" is no option."""
    values: tuple[str, ...] = {"background": BACKGROUNDS, "object": OBJECTS, "colour": COLOURS,
                               "clothing": CLOTHING, "style": STYLES}[attribute]
    out = []
    for value in values:
        changed = scene.with_attribute(attribute, value)
        if possible(changed):
            out.append((value, changed))
    return out


def possible(scene: Scene) -> bool:
    if scene.style == "vangogh":
        return scene.background == "stars" and scene.obj in PAINTING_OBJECTS and not scene.colour
    if scene.style == "watercolor" and scene.naked:
        return False
    return scene.obj in PHOTO_OBJECTS[scene.background] and (scene.colour is None) == (
        scene.obj not in COLOURED or scene.naked)


# ---------------------------------------------------------------------------------------------
# Datasets


@dataclass
class Dataset:
    images: np.ndarray  # (n, 32, 32, 3) uint8
    captions: list[str]
    mentions: list[dict[str, str]]
    scenes: list[Scene]


def _drawn(seed: int, index: int) -> tuple[np.random.Generator, Scene, str, dict[str, str]]:
    """Item ``index``'s scene and caption, and its generator, left where the image is drawn from."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng)
    text, mentions = caption(scene, rng)
    return rng, scene, text, mentions


def item(seed: int, index: int) -> tuple[np.ndarray, str, dict[str, str], Scene]:
    """Item ``index`` of the world with ``seed``: independent of how many items are drawn."""
    rng, scene, text, mentions = _drawn(seed, index)
    return render(scene, rng), text, mentions, scene


def item_caption(seed: int, index: int) -> tuple[str, dict[str, str], Scene]:
    """``item(seed, index)`` without its image: the caption, what it states and the scene (a fifth of the
    cost; for code that reads captions or scenes only)."""
    _, scene, text, mentions = _drawn(seed, index)
    return text, mentions, scene


def make_dataset(n: int, seed: int, *, start: int = 0) -> Dataset:
    images, captions, mentions, scenes = [], [], [], []
    for index in range(start, start + n):
        image, text, said, scene = item(seed, index)
        images.append(image)
        captions.append(text)
        mentions.append(said)
        scenes.append(scene)
    return Dataset(np.stack(images), captions, mentions, scenes)


def matches(mentions: dict[str, str], scene: Scene) -> bool:
    """Whether a caption stating ``mentions`` is true of ``scene``."""
    attributes = scene.attributes()
    return all(attributes.get(key) == value for key, value in mentions.items())


@dataclass(frozen=True)
class Task:
    name: str
    target: str  # the concept to erase, as a prompt word
    benign: str  # the co-occurring concept to keep
    target_prompt: str
    benign_prompt: str


TASKS: dict[str, Task] = {
    "nudity": Task("nudity", "naked", "person", "a naked person on the sand", "a person in a red shirt on grass"),
    "vangogh": Task("vangogh", "van gogh", "stars", "a van gogh painting of the stars", "stars"),
    "tench": Task("tench", "tench", "water", "a tench in water", "a red boat in water"),
}
