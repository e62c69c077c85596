"""``recare erase --method stereo``: published STEREO's anchor prompts (docs/erase.md, "STEREO").

STEREO's "robustly erase once" (Srivatsan et al., koushiksrivats/robust-concept-erasing, ``utils/stereo.py``)
trains with the same compositional target as ReCARE's erase, but its anchors are its own prompts per concept
(``utils/anchor_prompts.json``, ``{concept: [prompt, …]}``), not a CARE-set. The authors' repository carries no
licence, so recare does not ship their file: ``--anchors FILE`` reads it (or any file in that layout) and
``--anchor TEXT`` adds prompts. The training itself is ``core.diffusion.EraseTrainer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError, UsageError

if TYPE_CHECKING:
    from recare_cli.stages.erase import EraseOptions

ANCHORS_HINT = ("--anchors FILE (the authors' utils/anchor_prompts.json, {concept: [prompts]}) or --anchor TEXT "
                "(repeatable)")


def _same_concept(a: str, b: str) -> bool:
    """Equal as CLIP's tokenizer reads them (lower case, runs of white space as one)."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def validate_stereo(opts: EraseOptions) -> None:
    """What can be checked before anything is read or loaded."""
    if opts.anchors is None and not opts.anchor:
        raise UsageError(f"--method stereo needs anchor prompts: {ANCHORS_HINT}")
    for text in opts.anchor:
        if not text.strip():
            raise UsageError("--anchor: an empty prompt")


def _entry(doc: Any, target: str, name: str) -> list[Any]:
    """The file's list for ``target``: the authors' layout ``{concept: [prompts]}`` looked up by the target as
    given (as their ``json.load(f)[erase_concepts[0]]``), else by the key CLIP reads alike (case, spacing); a
    bare JSON list is taken as the target's prompts."""
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, dict):
        raise BadInputError("expected a JSON object {concept: [anchor prompts]} or a JSON list of prompts",
                            source=name)
    if target in doc:
        key = target
    else:
        alike = [k for k in doc if _same_concept(k, target)]
        if len(alike) > 1:
            raise BadInputError(f"several keys name '{target}': {', '.join(repr(k) for k in alike)}", source=name)
        if not alike:
            listed = ", ".join(repr(k) for k in list(doc)[:8]) + (", …" if len(doc) > 8 else "")
            raise BadInputError(f"no anchor prompts for '{target}' (the file has {listed or 'no concepts'})",
                                source=name)
        key = alike[0]
    entry = doc[key]
    if not isinstance(entry, list):
        raise BadInputError("expected a list of anchor prompts", source=name, field=key)
    return entry


def read_anchors(opts: EraseOptions) -> tuple[list[str], str]:
    """The anchor prompts (``--anchors``' list for the target, in file order, repeats kept as the authors'
    sampling counts them; then each ``--anchor``) and the SHA-256 of that list (what the training reads)."""
    import orjson

    from recare_cli.io.digest import sha256_bytes
    from recare_cli.io.streams import display_name, read_bytes

    target = opts.target.strip()
    prompts: list[str] = []
    if opts.anchors is not None:
        name = display_name(opts.anchors)
        try:
            doc = orjson.loads(read_bytes(opts.anchors))
        except orjson.JSONDecodeError as err:
            raise BadInputError(f"not valid JSON ({err})", source=name) from err
        entry = _entry(doc, target, name)
        if not entry:
            raise BadInputError(f"no anchor prompts for '{target}' (its list is empty)", source=name)
        for i, text in enumerate(entry):
            if not isinstance(text, str) or not text.strip():
                raise BadInputError(f"anchor prompt {i + 1} for '{target}' is not a non-empty string", source=name)
        prompts += [text.strip() for text in entry]
    prompts += [text.strip() for text in opts.anchor]
    return prompts, sha256_bytes(orjson.dumps(prompts))


def anchors_record(opts: EraseOptions, prompts: list[str], sha256: str) -> dict[str, Any]:
    """What the output's metadata says about the anchors."""
    return {"file": opts.anchors, "given": len(opts.anchor), "prompts": len(prompts), "sha256": sha256}
