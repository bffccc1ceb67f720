"""Loaders: each layout on a tiny generated tree / CSV, and malformed inputs -> clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handler.contract import EXPRESSION_LABELS
from training.data import (
    DataConfig,
    DataError,
    generate_faces,
    load_records,
    load_report,
    predefined_split,
)
from training.data.loaders import FER_TO_MSDE, parse_msde_name


def config(**fields: object) -> DataConfig:
    """A data config without face detection: these tests are about the loaders."""
    return DataConfig(detect=False, **fields)  # type: ignore[arg-type]


def write_image(path: Path, seed: int = 0, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return path


# ---------------------------------------------------------------- MSD-E


def msde_tree(root: Path, names: list[str], *, twins: bool = True) -> Path:
    for k, name in enumerate(names):
        write_image(root / "MSD-E" / name, k)
        if twins:
            write_image(root / "MSD-ME" / name, 100 + k)
    (root / "MSD-ME").mkdir(parents=True, exist_ok=True)
    (root / "Paired_files.txt").write_text("\n".join(names) + "\n\n")
    return root


def test_msde_layout_pairs_each_face_with_its_masked_twin(tmp_path: Path) -> None:
    root = msde_tree(tmp_path, ["017_3_2.jpg", "017_0_1.jpg", "042_6_1.png"])
    records = load_records(config(layout="msde", root=root))
    assert [(r.subject, r.label) for r in records] == [("017", 3), ("017", 0), ("042", 6)]
    for r in records:
        assert r.image_path is not None and r.image_path.parent.name == "MSD-E"
        assert r.masked_path is not None and r.masked_path.parent.name == "MSD-ME"
        assert r.masked_path.name == r.image_path.name


def test_msde_uses_only_the_listed_pairs(tmp_path: Path) -> None:
    root = msde_tree(tmp_path, ["001_1_1.jpg", "002_2_1.jpg"])
    write_image(root / "MSD-E" / "003_4_1.jpg")
    write_image(root / "MSD-ME" / "003_4_1.jpg")
    assert len(load_records(config(layout="msde", root=root))) == 2


def test_msde_missing_folder_is_named(tmp_path: Path) -> None:
    write_image(tmp_path / "MSD-E" / "001_1_1.jpg")
    with pytest.raises(DataError, match="MSD-ME"):
        load_records(config(layout="msde", root=tmp_path))


def test_msde_missing_pair_list_is_named(tmp_path: Path) -> None:
    (tmp_path / "MSD-E").mkdir()
    (tmp_path / "MSD-ME").mkdir()
    with pytest.raises(DataError, match="Paired_files.txt"):
        load_records(config(layout="msde", root=tmp_path))


def test_msde_names_without_label_are_all_listed(tmp_path: Path) -> None:
    root = msde_tree(tmp_path, ["017_3_2.jpg", "nolabel.jpg", "018_x_1.jpg", "019_9_1.jpg"])
    with pytest.raises(DataError) as err:
        load_records(config(layout="msde", root=root))
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "nolabel.jpg: name has no label" in message
    assert "018_x_1.jpg" in message and "not a number" in message
    assert "019_9_1.jpg: label 9 outside 0..6" in message
    assert "017_3_2.jpg" not in message


def test_msde_pair_missing_its_masked_twin_is_listed(tmp_path: Path) -> None:
    root = msde_tree(tmp_path, ["017_3_2.jpg", "017_4_2.jpg"])
    (root / "MSD-ME" / "017_4_2.jpg").unlink()
    with pytest.raises(DataError, match=r"017_4_2\.jpg: masked twin missing"):
        load_records(config(layout="msde", root=root))


def test_corrupt_image_is_skipped_and_reported(tmp_path: Path) -> None:
    root = msde_tree(tmp_path, ["017_3_2.jpg", "018_1_1.jpg"])
    corrupt(root / "MSD-E" / "018_1_1.jpg")
    report = load_report(config(layout="msde", root=root))
    assert [r.subject for r in report.records] == ["017"]
    assert len(report.skipped) == 1
    assert report.skipped[0].item.endswith("018_1_1.jpg")


def test_corrupt_image_is_an_error_when_strict(tmp_path: Path) -> None:
    root = msde_tree(tmp_path, ["017_3_2.jpg", "018_1_1.jpg"])
    corrupt(root / "MSD-ME" / "018_1_1.jpg")
    with pytest.raises(DataError, match=r"MSD-ME.018_1_1\.jpg"):
        load_records(config(layout="msde", root=root, strict=True))


def test_msde_name_parser() -> None:
    assert parse_msde_name("017_3_2.jpg") == ("017", 3)
    assert parse_msde_name("a7_0.png") == ("a7", 0)
    with pytest.raises(ValueError, match="no label"):
        parse_msde_name("017.jpg")


# ---------------------------------------------------------------- class folders


def test_label_folders_match_aliases_case_insensitively(tmp_path: Path) -> None:
    folders = {"Surprised": 0, "fearful": 1, "DISGUST": 2, "happy": 3, "Sad": 4, "angry": 5,
               "Neutral": 6}
    for k, name in enumerate(folders):
        write_image(tmp_path / name / f"img{k}.jpg", k)
    (tmp_path / "happy" / "notes.txt").write_text("not an image")
    records = load_records(config(layout="folders", root=tmp_path))
    assert sorted((r.image_path.parent.name, r.label) for r in records) == sorted(folders.items())
    assert all(r.subject == r.image_path.stem for r in records)  # default: own subject


def test_unknown_label_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    write_image(tmp_path / "happy" / "a.jpg")
    write_image(tmp_path / "contempt" / "b.jpg")
    with pytest.raises(DataError, match="unknown label folder .*contempt.*label_map"):
        load_records(config(layout="folders", root=tmp_path))


def test_label_map_ignores_and_renames_folders(tmp_path: Path) -> None:
    # RAF-DB style numeric folders: 1 = surprise ... 7 = neutral; AffectNet's contempt dropped
    for k in range(1, 8):
        write_image(tmp_path / str(k) / f"train_{k:05d}.jpg", k)
    write_image(tmp_path / "contempt" / "c.jpg")
    label_map: dict[str, str | None] = {str(k): EXPRESSION_LABELS[k - 1] for k in range(1, 8)}
    label_map["contempt"] = None
    records = load_records(config(layout="folders", root=tmp_path, label_map=label_map))
    assert sorted((r.image_path.parent.name, r.label) for r in records) == [
        (str(k), k - 1) for k in range(1, 8)
    ]


def test_label_map_with_unknown_target_is_rejected(tmp_path: Path) -> None:
    write_image(tmp_path / "1" / "a.jpg")
    with pytest.raises(DataError, match="label_map"):
        load_records(config(layout="folders", root=tmp_path, label_map={"1": "boredom"}))


def test_subject_regex_groups_images_of_one_person(tmp_path: Path) -> None:
    write_image(tmp_path / "happy" / "s01_a.jpg", 1)
    write_image(tmp_path / "sad" / "s01_b.jpg", 2)
    write_image(tmp_path / "sad" / "s02_a.jpg", 3)
    cfg = config(layout="folders", root=tmp_path, subject_regex=r"^(?P<subject>s\d+)_")
    assert sorted(r.subject for r in load_records(cfg)) == ["s01", "s01", "s02"]


def test_files_the_subject_regex_does_not_match_are_listed(tmp_path: Path) -> None:
    write_image(tmp_path / "happy" / "s01_a.jpg")
    write_image(tmp_path / "happy" / "anonymous.jpg")
    cfg = config(layout="folders", root=tmp_path, subject_regex=r"^(s\d+)_")
    with pytest.raises(DataError, match="anonymous.jpg: subject_regex"):
        load_records(cfg)


def test_split_folders_become_the_predefined_split(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "happy" / "a.jpg", 1)
    write_image(tmp_path / "train" / "sad" / "b.jpg", 2)
    write_image(tmp_path / "test" / "happy" / "c.jpg", 3)
    records = load_records(config(layout="folders", root=tmp_path))
    train, val, test = predefined_split(records)
    assert sorted(records[i].image_path.name for i in train) == ["a.jpg", "b.jpg"]
    assert len(val) == 0 and [records[i].image_path.name for i in test] == ["c.jpg"]


def test_masked_root_twins_are_paired_and_missing_ones_listed(tmp_path: Path) -> None:
    write_image(tmp_path / "faces" / "happy" / "a.jpg", 1)
    write_image(tmp_path / "faces" / "sad" / "b.jpg", 2)
    write_image(tmp_path / "masked" / "happy" / "a.jpg", 3)
    cfg = config(layout="folders", root=tmp_path / "faces", masked_root=tmp_path / "masked")
    with pytest.raises(DataError, match=r"b\.jpg: masked twin missing"):
        load_records(cfg)
    write_image(tmp_path / "masked" / "sad" / "b.jpg", 4)
    records = load_records(cfg)
    assert all(r.masked_path is not None and r.masked_path.is_file() for r in records)


def test_missing_root_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        load_records(config(layout="folders", root=tmp_path / "nowhere"))


def test_folder_tree_with_only_corrupt_images_is_an_error_listing_them(tmp_path: Path) -> None:
    corrupt(tmp_path / "happy" / "broken.jpg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_records(config(layout="folders", root=tmp_path))


# ---------------------------------------------------------------- FER2013


def fer_csv(path: Path, rows: list[tuple[int, list[int], str]], header: str) -> Path:
    lines = [header] + [f'{e},"{" ".join(map(str, px))}",{u}' for e, px, u in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fer2013_rows_map_to_msde_labels_and_usage_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    usages = ["Training", "PublicTest", "PrivateTest"]
    rows = [(e, rng.integers(0, 256, 2304).tolist(), usages[e % 3]) for e in range(7)]
    path = fer_csv(tmp_path / "fer2013.csv", rows, "emotion,pixels,Usage")
    records = load_records(config(layout="fer2013", root=tmp_path))
    names = [EXPRESSION_LABELS[r.label] for r in records]
    assert names == ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    assert [r.label for r in records] == list(FER_TO_MSDE)
    assert len({r.subject for r in records}) == 7  # each row its own subject
    first = records[0].pixels
    assert first is not None and first.shape == (48, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first[..., 1].ravel(), np.array(rows[0][1], dtype=np.uint8))
    assert [r.split for r in records[:3]] == ["train", "val", "test"]
    assert load_records(config(layout="fer2013", root=path))[6].label == 6


def test_fer2013_bad_header_is_an_error(tmp_path: Path) -> None:
    path = fer_csv(tmp_path / "x.csv", [(0, [0] * 2304, "Training")], "label,image,Usage")
    with pytest.raises(DataError, match="emotion,pixels"):
        load_records(config(layout="fer2013", root=path))


def test_fer2013_wrong_pixel_count_names_the_line(tmp_path: Path) -> None:
    rows = [(0, [0] * 2304, "Training"), (3, [1] * 2000, "Training")]
    path = fer_csv(tmp_path / "x.csv", rows, "emotion,pixels,Usage")
    with pytest.raises(DataError, match="line 3: 2000 pixels, expected 2304"):
        load_records(config(layout="fer2013", root=path))


def test_fer2013_unknown_emotion_and_usage_are_listed(tmp_path: Path) -> None:
    rows = [(9, [0] * 2304, "Training"), (1, [0] * 2304, "Dev")]
    path = fer_csv(tmp_path / "x.csv", rows, "emotion,pixels,Usage")
    with pytest.raises(DataError) as err:
        load_records(config(layout="fer2013", root=path))
    assert "line 2: emotion 9" in str(err.value) and "line 3: Usage 'Dev'" in str(err.value)


def test_fer2013_without_usage_column_has_no_predefined_split(tmp_path: Path) -> None:
    lines = ["emotion,pixels", f'3,"{" ".join(["7"] * 2304)}"']
    (tmp_path / "train.csv").write_text("\n".join(lines))
    records = load_records(config(layout="fer2013", root=tmp_path / "train.csv"))
    assert records[0].split is None and records[0].label == 3


def test_fer2013_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_records(config(layout="fer2013", root=tmp_path / "fer2013.csv"))


# ---------------------------------------------------------------- config


def test_real_layouts_need_a_root() -> None:
    with pytest.raises(ValueError, match="needs 'root'"):
        DataConfig(layout="msde")


def test_subject_regex_must_compile() -> None:
    with pytest.raises(ValueError, match="does not compile"):
        DataConfig(layout="folders", root=Path("."), subject_regex="(")


def test_real_images_get_their_face_located_and_cached(tmp_path: Path) -> None:
    face = generate_faces(1, 1, 96, seed=2)[0]
    (tmp_path / "happy").mkdir()
    Image.fromarray(face.pixels).save(tmp_path / "happy" / "a.png")
    cfg = DataConfig(layout="folders", root=tmp_path, detection_cache=tmp_path / "cache")
    (record,) = load_records(cfg)
    assert record.detection is not None and record.detection.keypoints is not None
    side = face.detection.width
    eyes = record.detection.keypoints[:2]
    assert np.abs(eyes - face.detection.keypoints[:2]).max() < 0.08 * side
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1


def test_synthetic_layout_generates_the_configured_size() -> None:
    cfg = DataConfig(layout="synthetic", n_subjects=2, images_per_subject=7, image_size=64)
    records = load_records(cfg)
    assert len(records) == 14 and {r.subject for r in records} == {"syn0000", "syn0001"}
    assert all(r.pixels is not None and r.pixels.shape == (64, 64, 3) for r in records)
