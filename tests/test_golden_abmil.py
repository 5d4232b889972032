from types import SimpleNamespace

import torch

from baselines.abmil import from_official
from tests.conftest import assert_close, golden_cases, load_golden


def test_abmil_reproduces_official_clam_sb():
    fx = load_golden("abmil.pt")
    model = from_official(fx["state_dict"], **fx["official_config"]).double().eval()
    for inputs, exp in golden_cases(fx):
        with torch.no_grad():
            out = model(SimpleNamespace(features=inputs["features"], slide_id="golden"))
        assert_close(out.logits, exp["logits"], "logits")
        assert_close(out.attention, exp["A"], "A")
        assert_close(out.extras["attention_raw"], exp["A_raw"], "A_raw")
        assert_close(out.extras["bag_feature"], exp["bag_feature"], "bag_feature")
