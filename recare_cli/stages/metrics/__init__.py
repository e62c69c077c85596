"""The metrics of ``recare score``, one module each, behind a registry (see ``base``).

A new metric is one module that defines its metric object (and any per-image extractor it brings),
and one line below that registers it: it becomes a choice of ``--metric`` and of the gates, and a
paragraph of ``recare score --help``, without a change to the stage. The order of registration is
the order of the help, and the extractors' order is the order of the models in the provenance.
"""

from recare_cli.stages.metrics import (
    care,
    classifier,
    classify,
    clip,
    clipfd,
    cmmd,
    embeddings,
    fid,
    inception,
    nudity,
    reference,
    stored,
)
from recare_cli.stages.metrics.base import (
    EXTRACTORS,
    REGISTRY,
    Extractor,
    ImageItem,
    Metric,
    Run,
    Scored,
    choices,
    register,
    register_extractor,
    summary,
)

register_extractor(embeddings.NAME, embeddings.load)
register_extractor(nudity.EXTRACTOR, nudity.load)
register_extractor(classifier.NAME, classifier.load)
register_extractor(inception.NAME, inception.load)
for _metric in (care.METRIC, clip.METRIC, nudity.METRIC, classify.METRIC, cmmd.METRIC, clipfd.METRIC, fid.METRIC):
    register(_metric)
register(classifier.METRIC)

__all__ = ["EXTRACTORS", "REGISTRY", "Extractor", "ImageItem", "Metric", "Run", "Scored", "choices", "reference",
           "register", "register_extractor", "stored", "summary"]
