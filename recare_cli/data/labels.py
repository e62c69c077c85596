"""Label sets for the CARE score and zero-shot classification (method.md §7).

``COCO80`` are the 80 MS-COCO object category names (2017 spelling: ``tv``, ``couch``,
``hair drier``) in the official category order. ``CARE_EXTRAS`` are the two labels the ReCARE
reference adds for its Van Gogh and Tench evaluations. ``CARE_REFERENCE`` is the reference's own
82-label list in the order of its ``metrics/care_eval.py`` (the order only matters for which
label is *reported* as top-1 when two non-concept labels tie exactly).
"""

from __future__ import annotations

COCO80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

CARE_EXTRAS: tuple[str, ...] = ("stars", "freshwater")

# The reference list: COCO without "person" first, then "person", then the extras.
CARE_REFERENCE: tuple[str, ...] = (*COCO80[1:], "person", *CARE_EXTRAS)

LABEL_SETS: dict[str, tuple[str, ...]] = {"coco80": COCO80, "care-reference": CARE_REFERENCE}

# The reference's "A photo of (a/an) …" template leaves out the article for these names.
_NO_ARTICLE = frozenset({
    "scissors", "skis", "snowboard", "sports ball", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "wine glass", "potted plant", "dining table", "cell phone",
    "teddy bear", "hair drier", "tv", "keyboard", "microwave", "refrigerator",
})


def reference_template(name: str) -> str:
    """The reference's optional label template: "A photo of a dog", "A photo of an apple",
    "A photo of stars" (plurals and the names above take no article)."""
    if name in _NO_ARTICLE or (name.endswith("s") and name != "glass"):
        return f"A photo of {name}"
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"A photo of {article} {name}"


def apply_template(name: str, template: str | None) -> str:
    """``None``: the raw label; ``"reference"``: :func:`reference_template`; else ``template``
    with ``{}`` replaced by the label."""
    if template is None:
        return name
    if template == "reference":
        return reference_template(name)
    return template.replace("{}", name)
