"""DSMIL: golden reproduction of the official MILNet, the official loss, edge cases, seeded patch dropout."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from baselines.dsmil import DSMIL, build, from_official
from tests.conftest import assert_close, golden_cases, load_golden, make_bag

FIXTURES = ["dsmil.pt", "extra/dsmil_c16_d512_c1_n9.pt"]  # C = 2 (TCGA) and C = 1 (Camelyon16)


@pytest.mark.parametrize("name", FIXTURES)
def test_dsmil_reproduces_official_milnet(name):
    fx = load_golden(name)
    model = from_official(fx["state_dict"], **fx["official_config"]).double().eval()
    for inputs, exp in golden_cases(fx):
        with torch.no_grad():
            out = model(SimpleNamespace(features=inputs["features"], slide_id="golden"))
        ex = out.extras
        assert_close(out.logits, exp["logits"], "logits")
        assert_close(ex["instance_logits"], exp["instance_logits"], "instance_logits")
        assert_close(ex["attention_per_class"], exp["attention"], "attention")
        assert_close(ex["bag_embedding"], exp["bag_embedding"], "bag_embedding")
        assert_close(ex["max_instance_logits"], exp["max_instance_logits"], "max_instance_logits")
        assert_close(ex["critical_index"].double(), exp["critical_index"], "critical_index")
        assert_close(ex["bag_prob"], exp["bag_prob"], "bag_prob")
        assert_close(ex["avg_prob"], exp["avg_prob"], "avg_prob")
        # the per-patch attention is the predicted class's column
        col = int(exp["logits"].argmax())
        assert_close(out.attention, exp["attention"][:, col], "attention (predicted class)")


def _bce(logit: torch.Tensor, y: float) -> torch.Tensor:
    """-[y log s(z) + (1 - y) log(1 - s(z))], written out."""
    return -(y * F.logsigmoid(logit) + (1 - y) * F.logsigmoid(-logit))


@pytest.mark.parametrize("name,label", [("dsmil.pt", 1), ("dsmil.pt", 0), ("extra/dsmil_c16_d512_c1_n9.pt", 1),
                                        ("extra/dsmil_c16_d512_c1_n9.pt", 0)])
def test_dsmil_loss_is_official_half_bag_half_max_bce(name, label):
    """train_tcga.py: 0.5 BCE(bag) + 0.5 BCE(max instance), one-hot targets for C >= 2, the label for C = 1."""
    fx = load_golden(name)
    model = from_official(fx["state_dict"], **fx["official_config"]).double().eval()
    inputs, exp = golden_cases(fx)[0]
    bag = SimpleNamespace(features=inputs["features"], slide_id="golden", label=label)
    terms = model.loss(model(bag), bag)
    n_classes = exp["logits"].shape[1]
    target = [float(label)] if n_classes == 1 else [float(c == label) for c in range(n_classes)]
    bag_bce = torch.stack([_bce(exp["logits"][0, c], t) for c, t in enumerate(target)]).mean()
    max_bce = torch.stack([_bce(exp["max_instance_logits"][0, c], t) for c, t in enumerate(target)]).mean()
    assert_close(terms["bag_bce"], bag_bce, "bag_bce")
    assert_close(terms["max_bce"], max_bce, "max_bce")
    assert_close(terms["total"], 0.5 * bag_bce + 0.5 * max_bce, "total")


def test_dsmil_loss_rejects_bad_labels_naming_the_slide():
    model = build(16, None, 2).double()
    bag = make_bag(n=5, d=16, label=2, slide_id="TCGA-X")
    bag.features = bag.features.double()
    with pytest.raises(ValueError, match="TCGA-X.*label 2"):
        model.loss(model(bag), bag)
    one = build(16, None, 1)
    bag1 = make_bag(n=5, d=16, label=2, slide_id="C16-7")
    with pytest.raises(ValueError, match="C16-7"):
        one.loss(one(bag1), bag1)
    bag1.label = None
    with pytest.raises(ValueError, match="C16-7.*no label"):
        one.loss(one(bag1), bag1)


@pytest.mark.parametrize("n_classes", [1, 2, 3])
def test_dsmil_one_instance_and_gradients_everywhere(n_classes):
    torch.manual_seed(0)
    # v = Dropout-Linear-ReLU, all weights used; the official init (zero heads would give q no gradient at step 0)
    model = build(16, None, n_classes, passing_v=True, dropout_v=0.1, init="orthogonal")
    for n in (1, 7):
        bag = make_bag(n=n, d=16, label=n_classes - 1)
        model.zero_grad()
        out = model(bag)
        assert out.logits.shape == (1, n_classes) and out.attention.shape == (n,)
        if n == 1:
            assert torch.allclose(out.extras["attention_per_class"], torch.ones(1, n_classes))
        terms = model.loss(out, bag)
        assert torch.isfinite(terms["total"])
        terms["total"].backward()
        if n == 1:  # softmax over one patch is constant: q gets a zero gradient, as in the official code
            continue
        missing = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient for {missing}"


def test_dsmil_is_permutation_invariant_in_eval():
    torch.manual_seed(0)
    model = build(16, None, 2, init="orthogonal").double().eval()  # zero heads tie every instance at init
    bag = make_bag(n=30, d=16)
    bag.features = bag.features.double()
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    out = model(bag)
    out_p = model(SimpleNamespace(features=bag.features[perm], slide_id="p"))
    assert torch.allclose(out.logits, out_p.logits, atol=1e-12)
    assert torch.allclose(out.attention[perm], out_p.attention, atol=1e-12)


def test_dsmil_orthogonal_init_as_train_tcga():
    torch.manual_seed(0)
    model = build(64, None, 2, init="orthogonal")
    w = model.b_classifier.q[0].weight  # (128, 64): orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(64), atol=1e-5)
    assert model.b_classifier.fcc.bias.abs().sum() == 0 and model.i_classifier.fc[0].bias.abs().sum() == 0
    fc = model.i_classifier.fc[0].weight  # (2, 64): orthonormal rows of norm 1
    assert torch.allclose(fc @ fc.T, torch.eye(2), atol=1e-5)


def test_dsmil_default_init_zeroes_the_two_linear_readouts_and_still_learns():
    torch.manual_seed(0)
    model = build(64, None, 2)  # init="zero_heads"
    w = model.b_classifier.q[0].weight
    assert torch.allclose(w.T @ w, torch.eye(64), atol=1e-5)  # the query network as train_tcga.py
    for m in (model.i_classifier.fc[0], model.b_classifier.fcc):
        assert m.weight.abs().sum() == 0 and m.bias.abs().sum() == 0
    bag = make_bag(n=12, d=64)
    out = model(bag)
    model.loss(out, SimpleNamespace(**{**vars(bag), "label": 1}))["total"].backward()
    assert model.i_classifier.fc[0].weight.grad.abs().sum() > 0 and model.b_classifier.fcc.weight.grad.abs().sum() > 0
    torch.manual_seed(0)
    plain = build(64, None, 2, init="torch")  # train_mil.py: torch's defaults
    assert plain.i_classifier.fc[0].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="init must be one of"):
        build(64, None, 2, init="xavier")


def _dropout_run(seed, global_seed=123, n=40, steps=3):
    torch.manual_seed(7)
    model = build(16, None, 2, dropout_patch=0.4, seed=seed).train()
    torch.manual_seed(global_seed)
    model.on_fit_start([])
    bag = make_bag(n=n, d=16)
    outs = [model(bag) for _ in range(steps)]
    return [o.extras["kept_index"] for o in outs], [o.logits.detach() for o in outs], outs


def test_dsmil_patch_dropout_is_official_and_seeded():
    kept, logits, outs = _dropout_run(seed=5)
    for k, o in zip(kept, outs):
        assert k.numel() == int(40 * (1 - 0.4)) == len(set(k.tolist()))  # int(N p) distinct rows
        assert o.attention.shape == (40,)
        dropped = torch.ones(40, dtype=torch.bool)
        dropped[k] = False
        assert (o.attention[dropped] == 0).all() and torch.allclose(o.attention.sum(), torch.tensor(1.0))
    assert not torch.equal(kept[0], kept[1])  # a fresh draw each step
    kept2, logits2, _ = _dropout_run(seed=5, global_seed=999)  # explicit seed: global RNG irrelevant
    assert all(torch.equal(a, b) for a, b in zip(kept, kept2))
    assert all(torch.equal(a, b) for a, b in zip(logits, logits2))
    kept3, _, _ = _dropout_run(seed=6)
    assert not torch.equal(kept[0], kept3[0])
    # seed=None: the generator is seeded from torch's global RNG at on_fit_start
    a, _, _ = _dropout_run(seed=None, global_seed=11)
    b, _, _ = _dropout_run(seed=None, global_seed=11)
    c, _, _ = _dropout_run(seed=None, global_seed=12)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])


def test_dsmil_patch_dropout_only_in_training_and_keeps_one_patch():
    torch.manual_seed(0)
    model = build(16, None, 2, dropout_patch=0.9, seed=0)
    bag = make_bag(n=1, d=16)
    assert model.train()(bag).extras["kept_index"].tolist() == [0]
    big = make_bag(n=20, d=16)
    out = model.eval()(big)
    assert "kept_index" not in out.extras and out.extras["instance_logits"].shape == (20, 2)
    with pytest.raises(ValueError, match="dropout_patch"):
        build(16, None, 2, dropout_patch=1.0)


def test_dsmil_rejects_empty_bag_and_reads_float32():
    model = build(16, None, 2)
    with pytest.raises(ValueError, match="s-empty.*empty bag"):
        model(SimpleNamespace(features=torch.zeros(0, 16), slide_id="s-empty"))
    out = model.double()(make_bag(n=4, d=16))  # float32 features into a float64 model
    assert out.logits.dtype == torch.float64


def test_dsmil_from_official_checks_shapes():
    fx = load_golden("extra/dsmil_c16_d512_c1_n9.pt")
    with pytest.raises(ValueError, match="i_classifier"):
        from_official(fx["state_dict"], input_size=512, output_class=2)
    assert isinstance(from_official(fx["state_dict"]), DSMIL)  # sizes read from the weights


def test_paper_era_model_is_linear_q_and_linear_v():
    """The classic benchmark recipe's model: dsmil.py as it was for the paper's table (fa97494:
    q = Linear(K, 128), v = Dropout(0) + Linear(K, K), no ReLU); HEAD's v ends in a ReLU."""
    from torch import nn

    from baselines.dsmil import CLASSIC_MIL_RECIPE

    m = DSMIL(16, 2, **{k: v for k, v in CLASSIC_MIL_RECIPE.hparams.items()})
    b = m.b_classifier
    assert isinstance(b.q, nn.Linear) and (b.q.in_features, b.q.out_features) == (16, 128)
    assert [type(x).__name__ for x in b.v] == ["FastDropout", "Linear"]
    head = DSMIL(16, 2, passing_v=True)
    assert [type(x).__name__ for x in head.b_classifier.v] == ["FastDropout", "Linear", "ReLU"]
    torch.manual_seed(0)
    bag = make_bag(12, 16, label=1)
    with torch.no_grad():
        b.v[1].weight.copy_(-torch.eye(16))   # negative values survive only without the ReLU
        b.v[1].bias.zero_()
        v = b.v(bag.features)
    assert torch.allclose(v, -bag.features) and (v < 0).any()
