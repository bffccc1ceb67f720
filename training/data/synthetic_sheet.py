"""Contact sheet of the synthetic data set: classes x identities, unmasked next to masked.

Looking at the data is the check no metric replaces: are the expressions readable, does the
mask sit where a mask sits, what is left above it. Faces are shown as the model sees them
(cropped by ``handler.align.align_face`` with the default crop), masks as the paired
dataset draws them.

CLI: ``python -m training.data.synthetic_sheet --out sheet.png [--identities 6 --seed 0]``
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from handler.align import align_face
from handler.contract import EXPRESSION_LABELS, CropSpec
from training.contact_sheet import contact_sheet, text_tile, write_sheet
from training.data.synthetic import synthetic_face
from training.masks import render_mask

LOG = logging.getLogger(__name__)
_LABEL_WIDTH = 110


def synthetic_sheet(
    identities: int = 6, size: int = 96, tile: int = 112, seed: int = 0
) -> np.ndarray:
    """RGB uint8 sheet: one row per expression, (unmasked, masked) pairs per identity."""
    tiles = []
    for label, name in enumerate(EXPRESSION_LABELS):
        tiles.append(text_tile(name, tile, _LABEL_WIDTH))
        for subject in range(identities):
            face = synthetic_face(subject, label, label, size, seed)
            masked = render_mask(face.image, face.detection.keypoints,
                                 rng=np.random.default_rng([seed, subject, label])).image
            for image in (face.image, masked):
                tiles.append(align_face(image, face.detection, (tile, tile), CropSpec()))
            tiles.append(np.full((tile, 4, 3), 255, np.uint8))
    return contact_sheet(tiles, columns=1 + 3 * identities)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--identities", type=int, default=6)
    parser.add_argument("--size", type=int, default=96, help="generated image side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(write_sheet(synthetic_sheet(args.identities, args.size, seed=args.seed), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
