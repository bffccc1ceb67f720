"""Synthetic faces: deterministic, balanced, exact geometry, expression in both face halves."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from handler.align import roll_angle
from training.data import generate_faces
from training.data.synthetic import (
    PARAMS,
    PROTOTYPES,
    UPPER_FACE_PARAMS,
    render_face,
    sample_expression,
    sample_identity,
    sample_pose,
    synthetic_face,
)
from training.masks import render_mask

SIZE = 96


def test_generator_is_deterministic_from_its_seed() -> None:
    a = generate_faces(2, 7, SIZE, seed=5)
    b = generate_faces(2, 7, SIZE, seed=5)
    c = generate_faces(2, 7, SIZE, seed=6)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.pixels, y.pixels)
        assert x.detection.box == y.detection.box
        assert np.array_equal(x.detection.keypoints, y.detection.keypoints)
    assert not np.array_equal(a[0].pixels, c[0].pixels)


def test_a_subjects_faces_do_not_depend_on_data_set_size() -> None:
    small = generate_faces(1, 7, SIZE)
    large = generate_faces(3, 7, SIZE)
    assert all(np.array_equal(s.pixels, g.pixels) for s, g in zip(small, large[:7], strict=True))


@pytest.mark.parametrize(("subjects", "per_subject"), [(3, 7), (4, 10), (5, 3)])
def test_labels_are_balanced(subjects: int, per_subject: int) -> None:
    records = generate_faces(subjects, per_subject, 48)
    counts = Counter(r.label for r in records)
    assert set(counts) <= set(range(7))
    assert max(counts.values()) - min(counts.get(k, 0) for k in range(7)) <= 1


def test_keypoints_sit_inside_the_face_in_blazeface_order() -> None:
    for r in generate_faces(4, 7, SIZE):
        d = r.detection
        kp = d.keypoints
        assert kp.shape == (6, 2) and kp.dtype == np.float32
        x1, y1, x2, y2 = d.box
        assert 0.35 * SIZE < x2 - x1 < 0.75 * SIZE and abs((x2 - x1) - (y2 - y1)) < 1e-3
        assert np.all((kp > 0) & (kp < SIZE))
        # eyes, nose and mouth inside the box; ears near its sides
        assert np.all((kp[:4, 0] > x1) & (kp[:4, 0] < x2) & (kp[:4, 1] > y1) & (kp[:4, 1] < y2))
        assert abs(np.degrees(roll_angle(kp))) < 13  # right eye (image left) comes first
        # in the face's own frame: eyes above nose above mouth, ears outside the eyes
        c, s = np.cos(-roll_angle(kp)), np.sin(-roll_angle(kp))
        local = kp @ np.array([[c, s], [-s, c]])
        assert local[0, 1] < local[2, 1] < local[3, 1] and local[1, 1] < local[2, 1]
        assert local[4, 0] < local[0, 0] < local[1, 0] < local[5, 0]


def test_keypoints_are_where_the_drawn_features_are() -> None:
    """Eye keypoints land on the dark iris/lashes region, not on skin or background."""
    for r in generate_faces(3, 7, SIZE):
        grey = r.pixels.astype(np.float32).mean(axis=2)
        for eye in r.detection.keypoints[:2]:
            x, y = np.round(eye).astype(int)
            patch = grey[y - 1 : y + 2, x - 1 : x + 2]
            ring = grey[y - 6 : y + 7, x - 6 : x + 7]
            assert patch.min() < np.median(ring)


def _same_face(expression: np.ndarray) -> np.ndarray:
    who = sample_identity(np.random.default_rng(1))
    pose = sample_pose(SIZE, np.random.default_rng(2))
    image, _ = render_face(who, expression, pose, SIZE, np.random.default_rng(3))
    return image.astype(np.int16)


def test_expression_shows_above_and_below_the_mask_line() -> None:
    who = sample_identity(np.random.default_rng(1))
    pose = sample_pose(SIZE, np.random.default_rng(2))
    _, det = render_face(who, PROTOTYPES[6], pose, SIZE, np.random.default_rng(3))
    eye_y = int(det.keypoints[:2, 1].max())
    neutral = _same_face(PROTOTYPES[6])
    for label in range(6):
        diff = np.abs(_same_face(PROTOTYPES[label]) - neutral).sum(axis=2)
        assert diff[: eye_y + 2].sum() > 0, f"label {label} invisible in the upper face"
        assert diff[eye_y + 6 :].sum() > 0, f"label {label} invisible in the lower face"


def test_a_synthetic_mask_covers_mouth_and_nose_but_not_the_eyes() -> None:
    for s in range(4):
        face = synthetic_face(s, 0, s % 7, SIZE)
        kp = face.detection.keypoints
        alpha = render_mask(face.image, kp, rng=np.random.default_rng(s)).alpha
        at = [alpha[int(round(y)), int(round(x))] for x, y in kp]
        assert at[3] > 0.9 and at[2] > 0.9  # mouth, nose tip
        assert at[0] < 0.05 and at[1] < 0.05  # eyes


def test_upper_face_alone_separates_the_expressions_only_partly() -> None:
    """The design property the masked-training experiments rely on."""
    x, y = [], []
    for s in range(60):
        who = sample_identity(np.random.default_rng([0, s, 0]))
        for j in range(21):
            x.append(sample_expression(j % 7, who, np.random.default_rng([0, s, 1, j])))
            y.append(j % 7)
    features, labels = np.array(x), np.array(y)
    upper = [PARAMS.index(p) for p in UPPER_FACE_PARAMS]
    model = LogisticRegression(max_iter=2000)
    full_acc = cross_val_score(model, features, labels, cv=3).mean()
    upper_acc = cross_val_score(model, features[:, upper], labels, cv=3).mean()
    assert full_acc > 0.88
    assert 0.4 < upper_acc < full_acc - 0.1
