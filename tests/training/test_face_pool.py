"""The face pool: real faces only, train and eval kept apart, deterministic and cached.

The fast tests build the pool from the sources that need no download (scikit-image's
lfw_subset for training; astronaut, camera and grace_hopper for evaluation) into a temporary
cache; the full build over every registry package is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from handler.faces import Detection
from training.data import face_pool
from training.data.face_pool import SOURCES, PoolFace, Shot, build_pool, load_rgb, rules
from training.data.face_pool.reading import MIN_FRAMES_PER_VIDEO, video_frame_indices
from training.data.face_pool.report import pool_sheet
from training.data.face_pool.rules import cap_per_identity, name_faces, plausible_keypoints
from training.data.face_pool.sources import LFW_UPSCALE

SMALL = ["lfw_subset", "astronaut", "camera", "grace_hopper"]
EVAL_ONLY = ["astronaut", "grace_hopper"]


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PoolFace]]:
    cache = tmp_path_factory.mktemp("face_pool")
    return cache, build_pool(cache, sources=SMALL, progress=False)


def _frontal(box: tuple[float, float, float, float], score: float = 0.9) -> Detection:
    """A detection with keypoints where a frontal face has them."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    kps = np.array(
        [[x1 + 0.3 * w, y1 + 0.35 * h], [x1 + 0.7 * w, y1 + 0.35 * h],
         [x1 + 0.5 * w, y1 + 0.55 * h], [x1 + 0.5 * w, y1 + 0.75 * h],
         [x1, y1 + 0.4 * h], [x2, y1 + 0.4 * h]],
        dtype=np.float32,
    )
    return Detection(box=box, score=score, keypoints=kps)


def _people(group: str) -> set[str]:
    shots = [shot for s in SOURCES.values() if s.group == group for shot in s.shots]
    return {person for shot in shots for person in shot.people}


def test_no_named_person_is_configured_in_both_groups() -> None:
    assert _people("train") and _people("eval")
    assert not _people("train") & _people("eval")


def test_train_and_eval_share_no_source_or_identity(
    small_pool: tuple[Path, list[PoolFace]],
) -> None:
    _, faces = small_pool
    train = [f for f in faces if f.group == "train"]
    evals = [f for f in faces if f.group == "eval"]
    assert len(train) >= 90 and evals
    assert not {f.source for f in train} & {f.source for f in evals}
    assert not {f.identity for f in train} & {f.identity for f in evals}


def test_eval_group_holds_astronaut_and_grace_hopper_faces(
    small_pool: tuple[Path, list[PoolFace]],
) -> None:
    _, faces = small_pool
    evals = {f.identity: f for f in faces if f.group == "eval"}
    assert {"person/eileen_collins", "person/grace_hopper"} <= set(evals)
    for face in evals.values():
        assert face.detection.score >= rules.MIN_SCORE
        assert face.detection.keypoints is not None


def test_every_detection_lies_inside_its_image(small_pool: tuple[Path, list[PoolFace]]) -> None:
    cache, faces = small_pool
    for face in faces:
        assert face.image_path.is_file() and cache in face.image_path.parents
        h, w = load_rgb(face).shape[:2]
        x1, y1, x2, y2 = face.detection.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (face.identity, face.detection.box)
        assert min(x2 - x1, y2 - y1) >= rules.MIN_FACE_SIDE


def test_lfw_crops_are_upscaled_and_named_one_person_each(
    small_pool: tuple[Path, list[PoolFace]],
) -> None:
    _, faces = small_pool
    lfw = [f for f in faces if f.source == "lfw_subset"]
    assert len({f.identity for f in lfw}) == len(lfw)
    shape = load_rgb(lfw[0]).shape
    assert shape == (25 * LFW_UPSCALE, 25 * LFW_UPSCALE, 3)


def test_pool_order_follows_sources_and_shots(small_pool: tuple[Path, list[PoolFace]]) -> None:
    _, faces = small_pool
    order = list(SOURCES)
    ranks = [order.index(f.source) for f in faces]
    assert ranks == sorted(ranks)
    lfw_ids = [f.identity for f in faces if f.source == "lfw_subset"]
    assert lfw_ids == sorted(lfw_ids)


def test_building_twice_from_scratch_gives_the_same_pool(tmp_path: Path) -> None:
    first = build_pool(tmp_path / "a", sources=EVAL_ONLY, progress=False)
    second = build_pool(tmp_path / "b", sources=list(reversed(EVAL_ONLY)), progress=False)
    as_json = [f.to_json(tmp_path / "a" / face_pool.POOL_VERSION / f.source) for f in first]
    assert as_json == [f.to_json(tmp_path / "b" / face_pool.POOL_VERSION / f.source)
                       for f in second]


def test_cache_hit_returns_equal_list_without_detecting(
    small_pool: tuple[Path, list[PoolFace]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, faces = small_pool

    def no_detector() -> None:
        raise AssertionError("a cached pool must not run the detector")

    monkeypatch.setattr(rules, "pool_detector", no_detector)
    assert build_pool(cache, sources=SMALL, progress=False) == faces


def test_stale_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_pool(tmp_path, sources=["astronaut"], progress=False)
    index = tmp_path / face_pool.POOL_VERSION / "astronaut" / "index.json"
    index.write_text(index.read_text().replace('"bundled"', '"older"'))
    calls: list[int] = []
    real = rules.pool_detector

    def counting() -> rules.Detect:
        calls.append(1)
        return real()

    monkeypatch.setattr(rules, "pool_detector", counting)
    assert build_pool(tmp_path, sources=["astronaut"], progress=False) == built
    assert calls == [1]


def test_groups_filter_the_pool(small_pool: tuple[Path, list[PoolFace]]) -> None:
    cache, faces = small_pool
    evals = build_pool(cache, sources=SMALL, groups=("eval",), progress=False)
    assert evals == [f for f in faces if f.group == "eval"]


def test_unknown_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="nba"):
        build_pool(tmp_path, sources=["nba"], progress=False)


def test_cap_keeps_at_most_n_faces_per_identity_spread_over_them() -> None:
    det = _frontal((0.0, 0.0, 50.0, 50.0))
    faces = [PoolFace(Path(f"/x/{i}.png"), det, "a" if i < 30 else "b", "s", "l", "train")
             for i in range(33)]
    capped = cap_per_identity(faces, 10)
    a = [int(f.image_path.stem) for f in capped if f.identity == "a"]
    assert len(a) == 10 and a[0] == 0 and a[-1] == 29
    assert [f.identity for f in capped].count("b") == 3


def test_face_like_keypoints_pass_and_scrambled_ones_fail() -> None:
    good = _frontal((10.0, 10.0, 110.0, 110.0))
    assert plausible_keypoints(good)
    assert good.keypoints is not None
    upside_down = good.keypoints.copy()
    upside_down[[0, 1, 3]] = upside_down[[3, 3, 0]]
    assert not plausible_keypoints(Detection(good.box, good.score, upside_down))
    far_away = good.keypoints + 500.0
    assert not plausible_keypoints(Detection(good.box, good.score, far_away))
    assert not plausible_keypoints(Detection(good.box, good.score, None))


def test_named_group_photo_is_named_left_to_right_and_needs_everyone() -> None:
    left, right, small = (_frontal((0.0, 0.0, 100.0, 100.0)), _frontal((300.0, 0.0, 390.0, 90.0)),
                          _frontal((150.0, 0.0, 190.0, 40.0)))
    shot = Shot("x.jpg", ("person/a", "person/b"))
    named = name_faces([right, small, left], shot, "src")
    assert [(d.box[0], who) for d, who in named] == [(0.0, "person/a"), (300.0, "person/b")]
    assert name_faces([left], shot, "src") == []
    unnamed = name_faces([right, left], Shot("dir/group.jpg"), "src")
    assert [who for _, who in unnamed] == ["src/group#0", "src/group#1"]


def test_videos_are_sampled_about_once_a_second_and_short_clips_ten_times() -> None:
    long = video_frame_indices(4800, 24.0)
    assert len(long) == 200 and all(20 <= b - a <= 28 for a, b in zip(long, long[1:]))
    short = video_frame_indices(120, 30.0)
    assert len(short) == MIN_FRAMES_PER_VIDEO and short[-1] < 120
    assert video_frame_indices(0, 25.0) == []


def test_contact_sheet_has_one_tile_per_face(small_pool: tuple[Path, list[PoolFace]]) -> None:
    _, faces = small_pool
    sheet = pool_sheet(faces[:7], tile=32, columns=5)
    assert sheet.shape == (2 * 32, 5 * 32, 3)
    assert sheet[:32, :32].std() > 10  # a face, not the white background
    assert (sheet[32:, 2 * 32:] == 255).all()  # row 2 holds 2 faces, then background


@pytest.mark.slow
def test_full_pool_counts() -> None:
    """Every registry source: fetches ~90 MB of packages and takes minutes on 2 cores."""
    faces = build_pool(progress=False)
    train = {f.identity for f in faces if f.group == "train"}
    evals = {f.identity for f in faces if f.group == "eval"}
    assert len(train) >= 180 and len(evals) >= 15
    assert not train & evals
    # scikit-image's cameraman is reserved, but the detector finds no face in it
    assert {s.name for s in SOURCES.values()} - {"camera"} == {f.source for f in faces}
