"""The ``clip`` extractor: L2-normalised CLIP image embeddings, the per-image features of the care,
clip and classify metrics, and CLIP text embeddings to compare them with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from recare_cli.stages.metrics.base import ImageItem, Run

if TYPE_CHECKING:
    import numpy as np

    from recare_cli.stages.score import ScoreOptions

NAME = "clip"


class ClipEmbeddings:
    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle

    def features(self, batch: Sequence[ImageItem], images: list[Any]) -> np.ndarray:
        from recare_cli.core.embed import embed_pixel_batch

        pixels = self.bundle.processor(images=images, return_tensors="pt")["pixel_values"]
        return embed_pixel_batch(self.bundle.model, pixels)

    def join(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        import numpy as np

        return np.concatenate(parts) if len(parts) else np.zeros((0, self.bundle.embed_dim), np.float32)

    def identity(self) -> dict[str, Any]:
        return dict(self.bundle.identity())

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return embed_texts(self.bundle, texts)


def load(opts: ScoreOptions, device: str) -> ClipEmbeddings:
    from recare_cli.models.clip import load_clip
    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    return ClipEmbeddings(load_clip(opts.clip, device=device, dtype=opts.dtype))


def embed_texts(clip_bundle: Any, texts: Sequence[str]) -> np.ndarray:
    """CLIP text embeddings of whole texts (truncated to CLIP's 77 tokens), batched, L2-normalised."""
    from recare_cli.core.embed import embed_token_sequences
    from recare_cli.models.clip import pad_id

    tok = clip_bundle.tokenizer
    ids = [list(tok(t, add_special_tokens=False)["input_ids"])[:75] for t in texts]
    return embed_token_sequences(clip_bundle.model, ids, bos=tok.bos_token_id, eos=tok.eos_token_id,
                                 pad=pad_id(tok), batch_size=256)


def image_embeddings(run: Run) -> np.ndarray:
    """The (N, D) image embeddings of the run's images, in order."""
    return run.features[NAME]


def text_embeddings(run: Run, texts: Sequence[str]) -> np.ndarray:
    """CLIP text embeddings of ``texts`` with the run's CLIP."""
    clip = run.extractors[NAME]
    assert isinstance(clip, ClipEmbeddings)
    return clip.texts(texts)

