"""The one place where a teacher's own class names are mapped to msde's expression labels.

Every ported teacher keeps its original output order (so parity with the original runtime is
checked on untouched outputs) and declares its label names; ``msde_order`` turns those names
into the index list that reorders its logits into ``handler.contract.EXPRESSION_LABELS``.
"""

from __future__ import annotations

from collections.abc import Sequence

from handler.contract import EXPRESSION_LABELS

# every spelling the ported teachers use, lower-cased -> msde label
SYNONYMS: dict[str, str] = {
    "surprise": "surprise", "surprised": "surprise",
    "fear": "fear", "fearful": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "happiness": "happiness", "happy": "happiness",
    "sadness": "sadness", "sad": "sadness",
    "anger": "anger", "angry": "anger",
    "neutral": "neutral",
}


def msde_order(labels: Sequence[str]) -> tuple[int, ...]:
    """For each msde label, the index of the same expression in ``labels``.

    ``logits[..., msde_order(labels)]`` reorders a teacher's outputs into msde order. Fails
    unless ``labels`` names each of the seven expressions exactly once.
    """
    canonical = []
    for name in labels:
        if name.lower() not in SYNONYMS:
            raise ValueError(f"unknown expression label {name!r} in {list(labels)}")
        canonical.append(SYNONYMS[name.lower()])
    if sorted(canonical) != sorted(EXPRESSION_LABELS):
        raise ValueError(f"{list(labels)} do not name each of {EXPRESSION_LABELS} once")
    return tuple(canonical.index(m) for m in EXPRESSION_LABELS)
