"""The feature bank: the frozen stages' output on banked views is what training would see."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data import DataConfig, PairedFaceDataset, load_records
from training.feature_bank import FeatureBank
from training.models import create_student, default_input_spec

SPEC = default_input_spec("resnet18_narrow").model_copy(update={"input_size": (3, 32, 32)})


@pytest.fixture(scope="module")
def dataset() -> PairedFaceDataset:
    records = load_records(DataConfig(layout="synthetic", n_subjects=2, images_per_subject=3,
                                      image_size=48))
    return PairedFaceDataset(records, SPEC, augment=True, seed=3)


def test_banked_view_v_is_the_frozen_stages_on_epoch_v(dataset: PairedFaceDataset) -> None:
    torch.manual_seed(0)
    stages = create_student("resnet18_narrow").stages()[:2]
    bank = FeatureBank(dataset, stages, views=3, seed=5, batch_size=4)
    prefix = torch.nn.Sequential(*stages).eval()
    with torch.no_grad():
        for i in (0, len(dataset) - 1):
            for v in range(3):
                item = dataset.item(i, v)
                for key in ("unmasked", "masked"):
                    torch.testing.assert_close(bank.bank[key][i, v], prefix(item[key][None])[0])
    assert not torch.equal(bank.bank["masked"][0, 0], bank.bank["masked"][0, 1])
    item = bank[1]
    assert int(item["label"]) == int(dataset.records[1].label) and int(item["index"]) == 1


def test_each_epoch_draws_a_seeded_view_per_pair(dataset: PairedFaceDataset) -> None:
    stages = create_student("resnet18_narrow").stages()[:1]
    bank = FeatureBank(dataset, stages, views=4, seed=5)
    draws = np.array([[bank.view_of(i, e) for i in range(len(bank))] for e in range(20)])
    assert set(np.unique(draws)) == {0, 1, 2, 3}
    assert draws.tolist() == [[bank.view_of(i, e) for i in range(len(bank))] for e in range(20)]
    bank.set_epoch(7)
    torch.testing.assert_close(bank[2]["unmasked"], bank.bank["unmasked"][2, bank.view_of(2, 7)])
