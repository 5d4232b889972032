"""A method added by an installed package through the ``momkd_bench.methods`` entry point alone
(issue #20): it is listed, runs, shows in Table 1 under its display name and passes check-method;
a broken plugin is reported, never breaks the built-in methods, and fails check-method by rule."""
import json
import sys
import textwrap

import pytest

from benchmarks import registry
from benchmarks.__main__ import main
from benchmarks.checks import check_method

PLUGIN = '''
from baselines.abmil import ABMIL, ABMILConfig, RECIPE, build
from benchmarks.spec import MethodSpec

SPEC = MethodSpec("plugabmil", family="mil", display="Plug-ABMIL", build=build, config=ABMILConfig,
                  recipes={"wsi": RECIPE}, description="an ABMIL copy shipped by a plugin package")


class NoTotal(ABMIL):
    def loss(self, output, bag):
        return {"ce": super().loss(output, bag)["ce"]}


def build_broken(in_dim, omics_dim, n_classes, **hp):
    model = build(in_dim, omics_dim, n_classes, **hp)
    model.__class__ = NoTotal
    return model


BROKEN = MethodSpec("plugbroken", family="mil", build=build_broken, config=ABMILConfig, recipes={"wsi": RECIPE})
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed distribution (a dist-info folder on sys.path) declaring three entry points."""
    (tmp_path / "mbplugin").mkdir()
    (tmp_path / "mbplugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "mbplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mbplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[momkd_bench.methods]\nplugabmil = mbplugin\n"
                                           "plugbroken = mbplugin:BROKEN\nnothing = json\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mbplugin", raising=False)
    monkeypatch.setattr(registry, "METHODS", registry.discover())
    return tmp_path


def test_a_plugin_method_is_listed_runs_and_shows_in_table_1(plugin, tmp_path, capsys):
    assert list(registry.METHODS)[:11] == [s.name for m in registry.BUILTIN_MODULES
                                          for s in registry.specs_of(__import__(m, fromlist=["_"]), m)]
    assert {"plugabmil", "plugbroken"} <= set(registry.METHODS) and "nothing" not in registry.METHODS
    capsys.readouterr()
    registry.discover()
    err = capsys.readouterr().err
    assert "nothing" in err and "declares no MethodSpec" in err  # reported, not fatal
    assert main(["list"]) == 0
    assert "Plug-ABMIL" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["run", "--scale", "tiny", "--methods", "abmil,plugabmil", "--tasks", "her2", "--folds", "0",
                 "--max-epochs", "1", "--grids", "cv", "--workers", "1", "--no-tracking", "--no-progress",
                 "--out", str(out)]) == 0
    table1 = (out / "tables" / "table1.md").read_text()
    assert "Plug-ABMIL" in table1 and table1.index("ABMIL (simulated)") < table1.index("Plug-ABMIL")
    assert json.loads((out / "summary.json").read_text())["n_failed"] == 0
    assert all(r.ok for r in check_method("plugabmil")), "the plugin copy of ABMIL meets the contract"


def test_a_broken_plugin_fails_check_method_naming_the_rule(plugin, capsys):
    res = {r.rule: r for r in check_method("plugbroken")}
    assert not res["loss"].ok and "[loss]" in res["loss"].detail and "'total'" in res["loss"].detail
    assert main(["check-method", "plugbroken", "--rules", "builds,loss"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_a_plugin_cannot_replace_a_built_in_method(tmp_path, monkeypatch):
    (tmp_path / "shadow.py").write_text("from baselines.abmil import SPEC\n")
    info = tmp_path / "shadow-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shadow\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[momkd_bench.methods]\nabmil = shadow\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="duplicate method name 'abmil'"):
        registry.discover()
