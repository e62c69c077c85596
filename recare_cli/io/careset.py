"""CARE-set files: ``recare.careset`` JSON and the reference implementation's layout.

Reference layout (``careset.json`` of damilab/CARE), ``<key>`` = target lower-cased, no spaces::

    {"<key>_care_word": ["A person", ...], "<key>_care_word_photo": ["A photo of person", ...]}

(``_care_word_painting`` / "A painting of …" for styles). Both read back, hand-edited or not.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, field
from typing import Any

from recare_cli.errors import BadInputError

FORMAT = "recare.careset"
VERSION = 2  # 2: prompts derived from the words through recorded templates; 1: prompt lists stored
PROPERTIES = ("object", "style")
ANCHOR_TEMPLATE = "A {}"
RETAIN_TEMPLATES = {"object": "A photo of {}", "style": "A painting of {}"}
_REFERENCE_SUFFIX = {"object": "_care_word_photo", "style": "_care_word_painting"}


def reference_key(target: str) -> str:
    """The reference's key: lower-cased, spaces removed, only ``[a-z0-9_-]`` kept."""
    return re.sub(r"[^a-z0-9_-]", "", target.strip().lower().replace(" ", ""))


@dataclass
class CareSet:
    """The CARE words are the one fact; the anchor and retain prompts are derived from them through the
    templates, unless a file spells a prompt list out by hand (``anchors`` / ``retains``: one prompt per
    word, in the words' order, each naming its word)."""

    target: str
    property: str
    words: list[str]
    anchor_template: str = ANCHOR_TEMPLATE
    retain_template: str = ""  # "": the property's template
    anchors: list[str] | None = None  # hand-written prompt lists (None: derived)
    retains: list[str] | None = None
    removed: list[dict[str, Any]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    clip: dict[str, Any] | None = None  # the CLIP model the words were mined with

    def __post_init__(self) -> None:
        if not self.retain_template:
            self.retain_template = RETAIN_TEMPLATES[self.property]

    @classmethod
    def from_words(cls, target: str, prop: str, words: list[str], **extra: Any) -> CareSet:
        return cls(target, prop, list(words), **extra)

    @builtins.property  # the field 'property' shadows the builtin in this class
    def anchor_prompts(self) -> list[str]:
        return list(self.anchors) if self.anchors is not None else [self.anchor_template.format(w) for w in self.words]

    @builtins.property
    def retain_prompts(self) -> list[str]:
        return list(self.retains) if self.retains is not None else [self.retain_template.format(w)
                                                                       for w in self.words]

    def to_recare(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "target": self.target,
                               "property": self.property, "words": self.words,
                               "templates": {"anchor": self.anchor_template, "retain": self.retain_template}}
        if self.anchors is not None:
            doc["anchor_prompts"] = self.anchors
        if self.retains is not None:
            doc["retain_prompts"] = self.retains
        doc.update(removed=self.removed, details=self.details, clip=self.clip, provenance=self.provenance)
        return doc

    def to_reference(self) -> dict[str, Any]:
        key = reference_key(self.target)
        return {f"{key}_care_word": self.anchor_prompts,
                f"{key}{_REFERENCE_SUFFIX[self.property]}": self.retain_prompts}


def _string_list(value: Any, src: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise BadInputError("expected a list of non-empty strings", source=src, field=key)
    return list(value)


def _template(value: Any, src: str, key: str) -> str:
    if not isinstance(value, str) or value.count("{}") != 1:
        raise BadInputError("expected a text with one {} where the word goes", source=src, field=key)
    return value


def _names(prompt: str, word: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(word.lower())}(?![\w])", prompt.lower()) is not None


def check_prompts(words: list[str], prompts: list[str], *, src: str, key: str) -> None:
    """A prompt list spelled out by hand must follow ``words``: one prompt per word, in order, naming it."""
    for i, word in enumerate(words):
        if i >= len(prompts):
            raise BadInputError(f"no prompt for CARE word '{word}' (the list follows 'words'; delete '{key}' to "
                                "derive the prompts from the words)", source=src, field=key)
        if not _names(prompts[i], word):
            raise BadInputError(f"prompt {i + 1} '{prompts[i]}' does not name CARE word '{word}' (the list follows "
                                f"'words'; delete '{key}' to derive the prompts from the words)", source=src,
                                field=key)
    if len(prompts) > len(words):
        raise BadInputError(f"prompt '{prompts[len(words)]}' has no CARE word in 'words' (edit both, or delete "
                            f"'{key}' to derive the prompts from the words)", source=src, field=key)


def is_reference_layout(doc: dict[str, Any]) -> bool:
    return any(k.endswith("_care_word") for k in doc)


def parse_careset(doc: Any, *, source: str, target: str | None = None) -> CareSet:
    """Read either layout. For the reference layout ``target`` (if given) picks the key."""
    if not isinstance(doc, dict):
        raise BadInputError("expected a JSON object", source=source)
    if doc.get("format") == FORMAT:
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
            raise BadInputError(f"unsupported version {version!r} (this recare reads 1 to {VERSION})",
                                source=source, field="version")
        prop = doc.get("property", "object")
        if prop not in PROPERTIES:
            raise BadInputError(f"must be one of {PROPERTIES}", source=source, field="property")
        if not isinstance(doc.get("target"), str):
            raise BadInputError("missing or not a string", source=source, field="target")
        words = _string_list(doc.get("words"), source, "words")
        templates = doc.get("templates", {})
        if not isinstance(templates, dict):
            raise BadInputError("expected an object", source=source, field="templates")
        anchor_t = _template(templates.get("anchor", ANCHOR_TEMPLATE), source, "templates.anchor")
        retain_t = _template(templates.get("retain", RETAIN_TEMPLATES[prop]), source, "templates.retain")
        care = CareSet(doc["target"], prop, words, anchor_t, retain_t,
                       removed=list(doc.get("removed", [])), details=list(doc.get("details", [])),
                       provenance=list(doc.get("provenance", [])), clip=doc.get("clip"))
        for key in ("anchor_prompts", "retain_prompts"):
            if key not in doc:
                continue
            prompts = _string_list(doc[key], source, key)
            check_prompts(words, prompts, src=source, key=key)
            derived = care.anchor_prompts if key == "anchor_prompts" else care.retain_prompts
            if prompts != derived:  # spelled out by hand: kept as written
                if key == "anchor_prompts":
                    care.anchors = prompts
                else:
                    care.retains = prompts
        return care
    if is_reference_layout(doc):
        keys = sorted(k[: -len("_care_word")] for k in doc if k.endswith("_care_word"))
        if target is not None and reference_key(target) in keys:
            key = reference_key(target)
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise BadInputError(f"holds several CARE-sets ({', '.join(keys)}); say which with --target",
                                source=source)
        anchor_key = f"{key}_care_word"
        anchors = _string_list(doc[anchor_key], source, anchor_key)
        prop = "style" if f"{key}_care_word_painting" in doc else "object"
        retain_key = f"{key}{_REFERENCE_SUFFIX[prop]}"
        if retain_key not in doc:
            raise BadInputError("missing", source=source, field=retain_key)
        retains = _string_list(doc[retain_key], source, retain_key)
        words = [a[2:] if a.startswith("A ") else a for a in anchors]
        check_prompts(words, retains, src=source, key=retain_key)
        care = CareSet(target or key, prop, words)
        if anchors != care.anchor_prompts:
            care.anchors = anchors
        if retains != care.retain_prompts:
            care.retains = retains
        return care
    raise BadInputError(f"neither a '{FORMAT}' document nor the reference '<key>_care_word' layout",
                        source=source)
