"""CARE-set files: ``recare.careset`` JSON and the reference implementation's layout.

Reference layout (``careset.json`` of damilab/CARE), ``<key>`` = target lower-cased, no spaces::

    {"<key>_care_word": ["A person", ...], "<key>_care_word_photo": ["A photo of person", ...]}

(``_care_word_painting`` / "A painting of …" for styles). Both read back, hand-edited or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from recare_cli.errors import BadInputError

FORMAT = "recare.careset"
VERSION = 1
PROPERTIES = ("object", "style")
ANCHOR_TEMPLATE = "A {}"
RETAIN_TEMPLATES = {"object": "A photo of {}", "style": "A painting of {}"}
_REFERENCE_SUFFIX = {"object": "_care_word_photo", "style": "_care_word_painting"}


def reference_key(target: str) -> str:
    """The reference's key: lower-cased, spaces removed, only ``[a-z0-9_-]`` kept."""
    return re.sub(r"[^a-z0-9_-]", "", target.strip().lower().replace(" ", ""))


@dataclass
class CareSet:
    target: str
    property: str
    words: list[str]
    anchor_prompts: list[str]
    retain_prompts: list[str]
    removed: list[dict[str, Any]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    clip: dict[str, Any] | None = None  # the CLIP model the words were mined with

    @classmethod
    def from_words(cls, target: str, prop: str, words: list[str], **extra: Any) -> CareSet:
        return cls(target, prop, list(words), [ANCHOR_TEMPLATE.format(w) for w in words],
                   [RETAIN_TEMPLATES[prop].format(w) for w in words], **extra)

    def to_recare(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "target": self.target,
                "property": self.property, "words": self.words,
                "anchor_prompts": self.anchor_prompts, "retain_prompts": self.retain_prompts,
                "removed": self.removed, "details": self.details, "clip": self.clip,
                "provenance": self.provenance}

    def to_reference(self) -> dict[str, Any]:
        key = reference_key(self.target)
        return {f"{key}_care_word": self.anchor_prompts,
                f"{key}{_REFERENCE_SUFFIX[self.property]}": self.retain_prompts}


def _string_list(value: Any, src: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise BadInputError("expected a list of non-empty strings", source=src, field=key)
    return list(value)


def is_reference_layout(doc: dict[str, Any]) -> bool:
    return any(k.endswith("_care_word") for k in doc)


def parse_careset(doc: Any, *, source: str, target: str | None = None) -> CareSet:
    """Read either layout. For the reference layout ``target`` (if given) picks the key."""
    if not isinstance(doc, dict):
        raise BadInputError("expected a JSON object", source=source)
    if doc.get("format") == FORMAT:
        version = doc.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise BadInputError(f"unsupported version {version!r} (this recare reads ≤ {VERSION})",
                                source=source, field="version")
        prop = doc.get("property", "object")
        if prop not in PROPERTIES:
            raise BadInputError(f"must be one of {PROPERTIES}", source=source, field="property")
        if not isinstance(doc.get("target"), str):
            raise BadInputError("missing or not a string", source=source, field="target")
        words = _string_list(doc.get("words"), source, "words")
        base = CareSet.from_words(doc["target"], prop, words)
        anchors = _string_list(doc["anchor_prompts"], source, "anchor_prompts") \
            if "anchor_prompts" in doc else base.anchor_prompts
        retains = _string_list(doc["retain_prompts"], source, "retain_prompts") \
            if "retain_prompts" in doc else base.retain_prompts
        return CareSet(doc["target"], prop, words, anchors, retains,
                       removed=list(doc.get("removed", [])), details=list(doc.get("details", [])),
                       provenance=list(doc.get("provenance", [])), clip=doc.get("clip"))
    if is_reference_layout(doc):
        keys = sorted(k[: -len("_care_word")] for k in doc if k.endswith("_care_word"))
        if target is not None and reference_key(target) in keys:
            key = reference_key(target)
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise BadInputError(f"holds several CARE-sets ({', '.join(keys)}); say which with --target",
                                source=source)
        anchors = _string_list(doc[f"{key}_care_word"], source, f"{key}_care_word")
        prop = "style" if f"{key}_care_word_painting" in doc else "object"
        retain_key = f"{key}{_REFERENCE_SUFFIX[prop]}"
        if retain_key not in doc:
            raise BadInputError("missing", source=source, field=retain_key)
        retains = _string_list(doc[retain_key], source, retain_key)
        words = [a[2:] if a.startswith("A ") else a for a in anchors]
        return CareSet(target or key, prop, words, anchors, retains)
    raise BadInputError(f"neither a '{FORMAT}' document nor the reference '<key>_care_word' layout",
                        source=source)
