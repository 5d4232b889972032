"""Training recipes (momkd/recipe.py, benchmarks/recipes.py, benchmarks/optim.py): each official
recipe builds the optimiser, schedule and losses it cites, and the engine follows it."""
import math

import pandas as pd
import pytest
import torch

from benchmarks import registry
from benchmarks.data.bag import Bag
from benchmarks.engine import fit, make_optimizer, seed_everything
from benchmarks.optim import Lookahead, build_scheduler
from benchmarks.protocol import ProtocolConfig
from benchmarks.recipes import official_recipe, resolve, shared_recipe
from momkd.recipe import Recipe

PROTO = ProtocolConfig(max_epochs=3, min_epochs=1, patience=2, lr=1e-3)
FAMILIES = [(name, fam) for name, spec in registry.METHODS.items() for fam in spec.recipe_table()]


def _bags(n, seed, d=8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        f = torch.randn(6, d, generator=g)
        f[:2, 0] += 1.5 * (i % 2)
        out.append(Bag(f"s{seed}_{i}", f"c{seed}_{i}", f, labels={"t": i % 2}).for_task("t"))
    return out


def _model(name, recipe, in_dim=16):
    spec = registry.get(name)
    seed_everything(0)
    small = {"embed_dim": 16, "attn_dim": 8} if name == "abmil" and not recipe.hparams else {}
    return spec.build_model(in_dim, 32 if "omics_train" in spec.needs else None, 2,
                            spec.hparams("default", small, base=recipe.hparams))


@pytest.mark.parametrize("name,family", FAMILIES)
def test_every_official_recipe_cites_its_settings_and_sets_valid_hparams(name, family):
    r = registry.get(name).recipe_table()[family]
    assert r.name == "official"
    for key in ("optimizer", "lr", "weight_decay", "epochs", "monitor", "loss"):
        assert key in r.sources, f"{name}/{family}: no source for {key}"
    # official WSI recipes cite a file and line of the official repository
    if family == "wsi":
        assert any(":L" in v for v in r.sources.values()), f"{name}: no line-level citation"
    spec = registry.get(name)
    spec.hparams("default", base=r.hparams)  # raises on an unknown hyper-parameter


@pytest.mark.parametrize("name,family", FAMILIES)
def test_official_recipe_builds_the_optimiser_it_cites(name, family):
    r = registry.get(name).recipe_table()[family].for_suite("musk2")
    model = _model(name, r)
    opt = make_optimizer(list(model.parameters()), r, model)
    base = opt.base if isinstance(opt, Lookahead) else opt
    expect = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "radam": torch.optim.RAdam, "lookahead_radam": torch.optim.RAdam}[r.optimizer]
    assert type(base) is expect
    assert isinstance(opt, Lookahead) == (r.optimizer == "lookahead_radam")
    for g in base.param_groups:
        assert g["lr"] == pytest.approx(r.lr)
        if r.optimizer != "sgd":
            assert tuple(g["betas"]) == r.betas
    decays = {g["weight_decay"] for g in base.param_groups if g["params"]}
    assert max(decays) == pytest.approx(r.weight_decay)


def test_cited_values_of_key_recipes():
    """Spot values against the official files (shared/research notes and the citations)."""
    ab = official_recipe(registry.get("abmil"))
    assert (ab.optimizer, ab.lr, ab.weight_decay, ab.epochs, ab.monitor, ab.patience, ab.min_epochs,
            ab.balanced_sampling) == ("adam", 2e-4, 1e-5, 200, "val_loss", 20, 52, True)
    ds = official_recipe(registry.get("dsmil"), "classic_mil")
    assert (ds.optimizer, ds.betas, ds.lr, ds.weight_decay, ds.epochs, ds.scheduler, ds.eta_min) == \
        ("adam", (0.5, 0.9), 2e-4, 5e-3, 40, "cosine", 0.0)
    assert ds.hparams["single_logit"] and ds.hparams["loss_scale_neg_over_pos"] and ds.hparams["init"] == "torch"
    assert official_recipe(registry.get("dsmil")).hparams["init"] == "orthogonal"  # train_tcga.py
    tm = official_recipe(registry.get("transmil"))
    assert (tm.optimizer, tm.decay_mask, tm.grad_accumulation, tm.monitor, tm.patience) == \
        ("lookahead_radam", "matrices", 2, "val_loss", 10)
    dt = official_recipe(registry.get("dtfdmil"))
    assert (dt.scheduler, dt.milestones, dt.gamma, dt.grad_clip, dt.clip_per_group, dt.select_after) == \
        ("multistep", (100,), 0.2, 5.0, True, 0.8)
    mo = official_recipe(registry.get("momkd"))
    assert (mo.scheduler, mo.plateau_factor, mo.plateau_patience, mo.grad_clip, mo.patience) == ("plateau", 0.2, 5, 16.0, 1)
    # a suite without a classic-MIL recipe falls back to the WSI one
    assert official_recipe(registry.get("wikg"), "classic_mil") is official_recipe(registry.get("wikg"), "wsi")
    # Ilse et al.'s per-data-set settings
    il = official_recipe(registry.get("abmil"), "classic_mil")
    assert il.for_suite("musk2").weight_decay == 3e-2 and il.for_suite("elephant").lr == 1e-4


def test_transmil_decay_mask_leaves_biases_and_1d_parameters_undecayed():
    r = official_recipe(registry.get("transmil"))
    model = _model("transmil", r)
    opt = make_optimizer(list(model.parameters()), r, model)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for n, p in model.named_parameters():
        assert (id(p) in no_decay) == (p.ndim <= 1 or n.endswith(".bias")), n
    assert id(model.cls_token) not in no_decay  # 3-D: decayed, as timm's add_weight_decay


def test_dsmil_benchmark_loss_is_half_bag_half_max_instance_bce_scaled_by_neg_over_pos():
    r = official_recipe(registry.get("dsmil"), "classic_mil")
    model = _model("dsmil", r, in_dim=8)
    train = _bags(10, 0)[:7]  # labels 0,1,0,1,0,1,0: 4 negative, 3 positive
    model.on_fit_start(train)
    assert model.loss_scale == pytest.approx(4 / 3)
    bag = train[1]
    out = model(bag)
    assert out.logits.shape == (1, 1)  # one output unit
    t = torch.ones(1, 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    want = 4 / 3 * (0.5 * bce(out.logits, t) + 0.5 * bce(out.extras["max_instance_logits"], t))
    assert torch.allclose(model.loss(out, bag)["total"], want)
    # the WSI recipe keeps the 2-unit one-hot targets without scaling
    m2 = _model("dsmil", official_recipe(registry.get("dsmil")), in_dim=8)
    o2 = m2(bag)
    t2 = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(m2.loss(o2, bag)["total"],
                          0.5 * bce(o2.logits, t2) + 0.5 * bce(o2.extras["max_instance_logits"], t2))


def test_schedules_follow_the_recipe():
    p = [torch.nn.Parameter(torch.zeros(2))]

    def lrs(recipe, epochs, scores=None):
        opt = make_optimizer(p, recipe)
        sched = build_scheduler(opt, recipe, epochs)
        out = []
        for e in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            sched.step(None if scores is None else scores[e])
        return out

    cos = lrs(Recipe(lr=1.0, epochs=4, scheduler="cosine", eta_min=0.0), 4)
    assert cos == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])
    mkd = lrs(Recipe(lr=1.0, epochs=6, scheduler="cosine", t_max=2), 6)  # T_max 50 of 100: the lr rises again
    assert mkd[2] == pytest.approx(0.0, abs=1e-12) and mkd[4] == pytest.approx(1.0)
    ms = lrs(Recipe(lr=1.0, epochs=4, scheduler="multistep", milestones=(2,), gamma=0.2), 4)
    assert ms == pytest.approx([1.0, 1.0, 0.2, 0.2])
    pl = lrs(Recipe(lr=1.0, epochs=5, scheduler="plateau", plateau_factor=0.2, plateau_patience=1), 5,
             scores=[0.5, 0.5, 0.5, 0.5, 0.5])
    assert pl[-1] == pytest.approx(0.2) and pl[0] == 1.0
    warm = lrs(Recipe(lr=1.0, epochs=4, scheduler="none", warmup_epochs=2), 4)
    assert warm == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])


def test_lookahead_syncs_every_k_steps_from_the_first_sync_on():
    """timm's Lookahead: slow weights start at the first sync (a no-op), then slow += a (fast - slow)."""
    w = torch.nn.Parameter(torch.zeros(1))
    base = torch.optim.SGD([w], lr=1.0)
    la = Lookahead(base, alpha=0.5, k=2)
    trace = []
    for _ in range(6):
        w.grad = torch.ones(1)  # each SGD step moves w by -1
        la.step()
        trace.append(float(w))
    # steps 1-2: -1, -2 (sync 1 stores slow = -2); 3-4: -3, -4 -> slow = -2 + 0.5 (-4 + 2) = -3; 5-6: -4, -5 -> -4
    assert trace == [-1.0, -2.0, -3.0, -3.0, -4.0, -4.0]


class _Counter(torch.nn.Module):
    """A tiny model that counts optimizer steps and reads of its validation predictions."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 2)
        self.steps = 0

    def forward(self, bag):
        from momkd.contract import Output

        return Output(self.lin(bag.features.mean(0, keepdim=True)))

    def loss(self, out, bag):
        ce = torch.nn.functional.cross_entropy(out.logits, torch.tensor([int(bag.label)]))
        return {"total": ce}

    def on_step_end(self):
        self.steps += 1


@pytest.mark.parametrize("partial,steps", [("step", 3 * 3), ("discard", 3 * 2), ("carry", 3 * 2)])
def test_gradient_accumulation_steps_every_k_slides(partial, steps):
    r = Recipe(lr=1e-2, epochs=3, scheduler="none", grad_accumulation=4, partial_accumulation=partial,
               monitor="none", balanced_sampling=False)
    m = _Counter()
    fit(m, _bags(10, 0), [], PROTO, seed=0, recipe=r)  # 10 slides: steps after 4 and 8 (+ the 2 left)
    assert m.steps == steps


def test_engine_tells_the_model_its_accumulation_before_each_stage():
    class Told(_Counter):
        told: list = []

        def set_accumulation(self, k):
            self.told.append(k)

    m = Told()
    fit(m, _bags(6, 0), [], PROTO, seed=0, recipe=Recipe(epochs=1, grad_accumulation=4, monitor="none"))
    fit(m, _bags(6, 0), [], PROTO, seed=0, recipe=Recipe(epochs=1, monitor="none"))
    assert m.told == [4, 1]


def test_accumulated_step_equals_one_step_on_the_mean_loss():
    bags = _bags(4, 0)
    r = Recipe(optimizer="sgd", lr=0.1, weight_decay=0.0, epochs=1, scheduler="none", grad_accumulation=4,
               monitor="none", balanced_sampling=False)
    torch.manual_seed(0)
    a = _Counter()
    b = _Counter()
    b.load_state_dict(a.state_dict())
    fit(a, bags, [], PROTO, seed=0, recipe=r)
    loss = sum(b.loss(b(x), x)["total"] for x in bags) / 4
    loss.backward()
    with torch.no_grad():
        for p in b.parameters():
            p -= 0.1 * p.grad
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_monitor_none_never_reads_the_validation_part_and_keeps_the_last_epoch():
    class Spy(list):
        def __getitem__(self, i):
            raise AssertionError("validation part read")

        def __iter__(self):
            raise AssertionError("validation part read")

    r = Recipe(lr=1e-2, epochs=3, scheduler="none", monitor="none")
    m = _Counter()
    out = fit(m, _bags(6, 0), Spy(), PROTO, seed=0, recipe=r)
    assert out["best_epoch"] == 2 and all("val_score" not in row for row in out["curve"])


def test_select_after_keeps_only_late_epochs():
    r = Recipe(lr=1e-2, epochs=10, scheduler="none", monitor="val_auc", select_after=0.8)
    out = fit(_Counter(), _bags(8, 0), _bags(6, 1), PROTO, seed=0, recipe=r)
    assert out["best_epoch"] == 9  # only epochs with index > int(0.8 * 10)


def test_per_group_clipping_clips_each_group():
    from baselines.dtfdmil import DTFDMIL

    seed_everything(0)
    m = DTFDMIL(8, 2, m_dim=16, attn_dim=8)
    bag = _bags(2, 0)[1]
    m.loss(m(bag), bag)["total"].mul(1e4).backward()
    from benchmarks.engine import _clip

    _clip([p for p in m.parameters()], m, Recipe(grad_clip=5.0, clip_per_group=True))
    for group in m.grad_clip_groups().values():
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in group if p.grad is not None]))
        assert norm <= 5.0 + 1e-4


def test_shared_recipe_mirrors_the_protocol_and_max_epochs_caps_official():
    s = shared_recipe(PROTO)
    assert (s.optimizer, s.lr, s.epochs, s.patience, s.min_epochs, s.grad_clip) == ("adamw", 1e-3, 3, 2, 1, 16.0)
    r = resolve(registry.get("abmil"), "official", PROTO, max_epochs=5)
    assert r.epochs == 5 and r.min_epochs == 5
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve(registry.get("abmil"), "mine", PROTO)


def test_recipe_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="optimizer"):
        Recipe(optimizer="lbfgs")
    with pytest.raises(ValueError, match="cannot early-stop"):
        Recipe(monitor="none", patience=3)
    with pytest.raises(ValueError, match="per_suite"):
        Recipe(per_suite={"musk1": {"learning_rate": 1.0}})
    r = Recipe(betas=[0.5, 0.9], milestones=[3])
    assert Recipe.from_dict(r.to_dict()) == r and r.betas == (0.5, 0.9)


def test_official_run_records_its_recipe_in_jobs_summary_and_tables(tmp_path):
    import json

    from benchmarks.__main__ import main

    args = ["run", "--scale", "tiny", "--methods", "abmil,dsmil", "--tasks", "her2", "--folds", "0",
            "--grids", "cv", "--max-epochs", "1", "--no-tracking", "--no-progress", "--workers", "1"]
    assert main(args + ["--out", str(tmp_path / "a"), "--recipe", "official"]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    jobs_a = [json.loads(p.read_text()) for p in (tmp_path / "a" / "jobs").glob("*.json")]
    jobs_b = {json.loads(p.read_text())["job"]["method"]: json.loads(p.read_text())
              for p in (tmp_path / "b" / "jobs").glob("*.json")}
    for j in jobs_a:
        assert j["job"]["recipe"] == "official"
        assert j["job"]["hash"] != jobs_b[j["job"]["method"]]["job"]["hash"]
    dsmil = next(j for j in jobs_a if j["job"]["method"] == "dsmil")
    assert dsmil["job"]["train"]["optimizer"] == "adam" and dsmil["job"]["train"]["betas"] == [0.5, 0.9]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["recipe"] == "official" and summary["recipes"]["abmil"]["sources"]
    assert "Recipe: official" in (tmp_path / "a" / "tables" / "table1.md").read_text()
    assert "Recipe: shared" in (tmp_path / "b" / "tables" / "table1.md").read_text()
    # one folder never mixes recipes: other job files in the folder are not read (the plan names
    # the run's jobs), and a plan listing jobs of both recipes is refused
    from benchmarks import report
    from benchmarks.jobs import read_plan, save_plan

    before, _ = report.load_results(tmp_path / "a")
    for p in (tmp_path / "b" / "jobs").glob("*.json"):
        (tmp_path / "a" / "jobs" / p.name).write_text(p.read_text())
    after, _ = report.load_results(tmp_path / "a")
    pd.testing.assert_frame_equal(before, after)
    mixed = [e for e in read_plan(tmp_path / "a") if e["method"] == "abmil"] + \
        [e for e in read_plan(tmp_path / "b") if e["method"] == "dsmil"]
    save_plan(tmp_path / "a", mixed)
    with pytest.raises(ValueError, match="different recipes"):
        report.write_all(tmp_path / "a", figure_formats=())
