"""recipe.yaml: round trip, strictness, and the recipes of every version written so far."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

import snows_hf
from snows_hf import PruneConfig
from snows_hf.data import CalibrationConfig
from snows_hf.methods import METHODS, MaskOnly, MethodConfig, SnowsConfig, get_method
from snows_hf.fields import SettingError, config_field
from snows_hf.recipe import load_recipe, read_recipe_yaml, recipe_dict, resolve_settings

SAVED = Path(__file__).parent / "data" / "recipes"


def test_every_output_carries_a_recipe_that_reruns_it(llama_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"text": "w{i} w{i + 3} w{i + 7} w{i + 1}"}}\n' for i in range(100)))
    snows_hf.run(llama_dir, {"sparsity": "60%", "method": "mask-only", "mask": "sparsegpt", "allocation": "global",
                             "targets": ["mlp"]},
                 {"dataset": str(data), "num_samples": 4, "seq_len": 16, "eval_samples": 2}, output_dir="out",
                 progress=False)
    prune, calib, model = load_recipe("out/recipe.yaml")
    assert prune == PruneConfig(sparsity="0.6", method="mask-only", mask="sparsegpt", allocation="global", targets=["mlp"])
    assert calib == CalibrationConfig(dataset=str(data), num_samples=4, seq_len=16, eval_samples=2)
    assert model == str(llama_dir)


@pytest.mark.parametrize(
    "text, message",
    [("prune: {sparsity: '2:4', k_stpe: 2}", "unknown keys prune.k_stpe"),
     ("prune: {sparsity: '2:4'}\nextra: 1", "unknown sections: extra"),
     ("data: {}", "needs a 'prune:' section"),
     ("prune: [1, 2]", "must be a mapping"),
     ("prune: {sparsity: '2:4'\n", "not valid YAML"),
     ("prune: {sparsity: '5:4'}", "invalid sparsity"),
     ("prune: !!python/object:os.system {}", "not valid YAML"),
     ("prune: {sparsity: '2:4', k_step: three}", "prune.k_step must be an int, got 'three'"),
     ("prune: {sparsity: '2:4', targets: 3}", "prune.targets must be a list of strings or None, got 3"),
     ("prune: {sparsity: '2:4', diagnostics: 'no'}", "prune.diagnostics must be a bool"),
     ("prune: {sparsity: '2:4', refit_unit: layer}", "prune.refit_unit must be module, group or block, got 'layer'")],
)
def test_bad_recipes(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_recipe(path)


def test_a_bundled_recipes_model_runs_on_that_recipe_with_the_given_settings_on_top():
    model, prune, data = resolve_settings("HuggingFaceTB/SmolLM2-135M", prune={"k_step": 1}, data={"num_samples": 16})
    base, base_data, base_model = load_recipe("smollm2-135m-2of4")
    assert model == base_model and prune == PruneConfig.from_dict(base.to_dict() | {"k_step": 1})
    assert data == dataclasses.replace(base_data, num_samples=16)
    # a dataset of one's own leaves the bundled recipe out; a recipe named gives the model
    _, prune, data = resolve_settings("HuggingFaceTB/SmolLM2-135M", prune={"sparsity": "50%"}, data={"dataset": "random"})
    assert prune == PruneConfig(sparsity="50%") and data == CalibrationConfig(dataset="random")
    assert resolve_settings(recipe="gpt2-50pct")[0] == load_recipe("gpt2-50pct")[2]


@pytest.mark.parametrize("kwargs, field, message", [
    ({"model": "gpt2-50pct"}, "model", "'gpt2-50pct' names a bundled recipe, not a model; run it with recipe='gpt2-50pct'"),
    ({}, "model", "model is required; or a recipe whose model: names one"),
    ({"model": "my-model", "data": {"dataset": "random"}}, "sparsity",
     "sparsity is required; e.g. sparsity='2:4', or a recipe with prune.sparsity"),
])
def test_resolve_settings_names_what_is_missing_as_python_spells_it(kwargs, field, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of a bundled recipe's name here
    with pytest.raises(SettingError) as err:
        resolve_settings(**kwargs)
    assert err.value.field == field and str(err.value) == message


def test_a_version_1_recipe_keeps_meaning_what_it_meant(tmp_path):
    """Defaults changed in version 2 (SparseGPT mask and start, preconditioned CG, 5 CG
    iterations): a recipe written by a version-1 run still describes that run."""
    path = tmp_path / "recipe.yaml"
    path.write_text("prune: {sparsity: '2:4', config_version: 1, k_step: 2}\n")
    prune, _, _ = load_recipe(path)
    assert (prune.mask, prune.method.init, prune.method.cg_iters, prune.method.preconditioner) == ("magnitude", "lsq", 10, "none")
    assert prune.method.k_step == 2 and prune.method.newton_steps == 2 and prune.config_version == 5
    path.write_text("prune: {sparsity: '2:4', config_version: 1, mask: wanda, cg_iters: 7}\n")
    prune, _, _ = load_recipe(path)
    assert (prune.mask, prune.method.cg_iters, prune.method.preconditioner) == ("wanda", 7, "none")
    path.write_text("prune: {sparsity: '2:4'}\n")  # hand-written, no version: today's defaults
    prune, _, _ = load_recipe(path)
    assert (prune.mask, prune.method.init, prune.method.cg_iters, prune.method.preconditioner) == ("sparsegpt", "best", 5, "input-energy")
    assert (prune.method.newton_steps, prune.method.newton_tol, prune.method.alternative_mask) == (3, 0.05, "magnitude")


@pytest.mark.parametrize("version, steps", [(2, 2), (3, 2), (4, 1), (5, 3)])
def test_a_recipe_without_newton_steps_means_its_versions_default(tmp_path, version, steps):
    """Version 4 made one Newton step the default (the knee of the measured frontier);
    a hand-written recipe of an older version that leaves the key out meant two."""
    path = tmp_path / "recipe.yaml"
    path.write_text(f"prune: {{sparsity: '2:4', config_version: {version}, cg_iters: 4}}\n")
    prune, _, _ = load_recipe(path)
    assert (prune.method.newton_steps, prune.method.cg_iters, prune.config_version) == (steps, 4, 5)
    # before version 5 a module had one start and a fixed number of steps
    old = version < 5
    assert (prune.method.init, prune.method.newton_tol, prune.method.alternative_mask) == (
        ("auto", 0.0, "none") if old else ("best", 0.05, "magnitude"))


# Settings of a run with every default of config_version 3 (the version each is read
# as is 4, whose one change of default, newton_steps, every saved file states), then what each saved recipe
# file (tests/data/recipes: written by snows-hf itself, at the commit its header names)
# changes. A version-1 file means what version 1 meant by the keys it lacks.
COMMON = {"sparsity": "2:4", "mask": "sparsegpt", "allocation": "uniform", "max_layer_sparsity": None, "targets": None,
          "ignore": None, "diagnostics": True, "stats_dtype": "float32", "batch_size": 8, "offload_activations": "device",
          "offload_dir": None, "device": "auto", "max_memory": None, "block_path": None, "seed": 0, "config_version": 5}
SNOWS = {"k_step": 3, "target": "dense-stream", "term_scale": "energy", "init": "auto", "hessian": "gauss-newton",
         "newton_steps": 2, "cg_iters": 5, "damping": 1e-4, "preconditioner": "input-energy", "holdout": 0.125,
         "batches_per_step": None, "hessian_batches": None, "newton_tol": 0.0, "alternative_mask": "none"}
SAVED_RECIPES = [  # file, method (read as today's name), settings unlike COMMON, SNOWS options unlike SNOWS
    ("v1-snows-early.yaml", "snows", {"mask": "magnitude", "batch_size": 4},
     {"k_step": 1, "newton_steps": 1, "init": "lsq", "cg_iters": 10, "preconditioner": "none"}),
    ("v1-none-wanda-early.yaml", "mask-only", {"sparsity": "0.6", "mask": "wanda"}, None),
    ("v1-snows.yaml", "snows", {"batch_size": 4}, {"k_step": 1, "newton_steps": 1}),
    ("v1-magnitude.yaml", "mask-only", {"sparsity": "0.5", "mask": "magnitude"}, None),
    ("v2-snows.yaml", "snows", {"sparsity": "0.5", "batch_size": 4},
     {"k_step": 1, "target": "official", "term_scale": "none", "init": "lsq", "hessian": "exact", "newton_steps": 1,
      "cg_iters": 3, "damping": 1e-3, "preconditioner": "none", "holdout": 0.25, "batches_per_step": 2,
      "hessian_batches": 1}),
    ("v2-none.yaml", "mask-only", {"sparsity": "0.6", "allocation": "global", "max_layer_sparsity": 0.95, "targets": ["mlp"],
                              "ignore": ["down_proj"], "stats_dtype": "float64"}, None),
    ("v2-magnitude.yaml", "mask-only", {"sparsity": "4:8", "mask": "magnitude", "diagnostics": False, "seed": 3}, None),
    ("v3-none.yaml", "mask-only", {"mask": "wanda"}, None),
]
#: what the mask-only options of each file are (versions 1 and 2 had none: they meant "module")
MASK_ONLY = {"v3-none.yaml": {"statistics": "module"}}


@pytest.mark.parametrize("name, method, common, options", SAVED_RECIPES)
def test_saved_recipes_of_every_version_load_to_the_same_settings(name, method, common, options):
    prune, data, model = load_recipe(SAVED / name)
    assert model == "tiny-llama" and data is not None
    assert prune.method.name == method
    for key, value in (COMMON | common).items():
        assert getattr(prune, key) == value, key
    for key, value in (SNOWS | options).items() if options is not None else ():
        assert getattr(prune.method, key) == value, key
    if options is None:  # the SNOWS keys such a file holds are not its method's options; versions 1 and 2
        # collected each module's statistics after the modules before it were pruned
        assert prune.method == get_method(method).config_class(**MASK_ONLY.get(name, {"statistics": "module"}))


#: earlier method names, and the settings that name them today
RENAMED = {"none": {"method": "mask-only"}, "magnitude": {"method": "mask-only", "mask": "magnitude"}}

#: options added since without a new config_version: their default is what every older file meant
ADDED = {"refit_unit": "module"}
#: options version 5 added, as every older SNOWS file means them, and today's defaults (with the start)
V5 = {"newton_tol": 0.0, "alternative_mask": "none"}
TODAY_V5 = {"init": "best", "newton_tol": 0.05, "alternative_mask": "magnitude"}


@pytest.mark.parametrize("name", sorted(p.name for p in SAVED.glob("v3-*.yaml")))
def test_a_version_3_recipe_writes_back_unchanged_but_for_its_version_and_method_name(name):
    prune, _, _ = load_recipe(SAVED / name)
    written = read_recipe_yaml(SAVED / name)["prune"] | {"config_version": 5}
    written |= RENAMED.get(written["method"], {})  # an earlier method name: what it is called today
    back = recipe_dict(prune)["prune"]
    other = {"newton_steps", "init", *ADDED, *V5}
    assert [(k, v) for k, v in back.items() if k not in other] == [(k, v) for k, v in written.items() if k not in other]
    assert {k: back[k] for k in ADDED} == ADDED
    # another method's options are stored at today's defaults; a SNOWS file keeps its own
    snows = prune.method.name.startswith("snows")
    assert back["newton_steps"] == (written["newton_steps"] if snows else 3)
    assert {k: back[k] for k in ("init", *V5)} == ({"init": written["init"]} | V5 if snows else TODAY_V5)


@pytest.mark.parametrize("name", sorted(p.name for p in SAVED.glob("v2-*.yaml")))
def test_a_version_2_recipe_writes_back_its_settings_as_they_were(name):
    """Key for key and in the same order: rerunning an output's recipe rewrites it as
    version 4 with what version 2 meant by the key it lacked (statistics per module)."""
    prune, _, _ = load_recipe(SAVED / name)
    written = read_recipe_yaml(SAVED / name)["prune"] | {"config_version": 5}
    written |= RENAMED.get(written["method"], {})  # an earlier method name: what it is called today
    back = recipe_dict(prune)["prune"]
    other = {"statistics", "newton_steps", "init", *ADDED, *V5}  # keys whose value comes from another method's defaults
    assert [(k, v) for k, v in back.items() if k not in other] == [(k, v) for k, v in written.items() if k not in other]
    assert {k: back[k] for k in ADDED} == ADDED
    snows = prune.method.name == "snows"
    assert back["statistics"] == ("block" if snows else "module")  # another method's default
    assert back["newton_steps"] == (written["newton_steps"] if snows else 3)
    assert {k: back[k] for k in ("init", *V5)} == ({"init": written["init"]} | V5 if snows else TODAY_V5)


def test_the_flat_form_holds_every_methods_options_and_refuses_another_methods_that_would_be_ignored():
    snows = PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=1))
    flat = snows.to_dict()
    assert list(flat) == PruneConfig.flat_keys() and (flat["method"], flat["k_step"]) == ("snows", 1)
    assert PruneConfig.from_dict(flat) == snows
    masked = PruneConfig(sparsity="2:4", method="mask-only")
    assert masked.to_dict()["k_step"] == 3  # another method's options are stored at their defaults
    assert PruneConfig.from_dict(masked.to_dict()) == masked  # and read back as such
    with pytest.raises(SettingError, match="k_step is an option of snows and snows-fast, not of mask-only") as caught:
        PruneConfig.from_dict(flat | {"method": "mask-only"})  # k_step=1 would be ignored
    assert caught.value.field == "k_step"
    with pytest.raises(SettingError, match="unknown settings: 'k_stpe'"):
        PruneConfig.from_dict({"sparsity": "2:4", "k_stpe": 1})
    with pytest.raises(ValueError, match="k_step belong in the method's config"):
        PruneConfig.from_dict({"sparsity": "2:4", "method": SnowsConfig(), "k_step": 1})
    with pytest.raises(SettingError, match="method must be a string or a MethodConfig, got 5"):
        PruneConfig(sparsity="2:4", method=5)

    @dataclass
    class Mine(SnowsConfig):
        pass

    with pytest.raises(ValueError, match="method 'snows' takes a SnowsConfig, got a Mine"):
        PruneConfig(sparsity="2:4", method=Mine())


def test_methods_that_share_options_each_take_them_from_flags_and_recipes(tmp_path):
    _, prune, _ = resolve_settings("my-model", prune={"sparsity": "2:4", "method": "snows-fast", "k_step": 1, "cg_iters": 3})
    assert (prune.method.name, prune.method.k_step, prune.method.cg_iters) == ("snows-fast", 1, 3)
    path = tmp_path / "recipe.yaml"
    path.write_text("prune: {sparsity: '2:4', method: mask-only, mask: magnitude, statistics: module}\n")
    assert load_recipe(path)[0].method.statistics == "module"


def test_another_method_than_a_recipes_leaves_the_recipes_options_out(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: m\nprune: {sparsity: '2:4', method: snows, k_step: 1, cg_iters: 9}\n")
    _, prune, _ = resolve_settings(recipe=path, prune={"method": "mask-only", "mask": "magnitude"})
    assert prune.method == get_method("mask-only").config_class() and prune.mask == "magnitude"
    _, prune, _ = resolve_settings(recipe=path, prune={"method": "snows-fast"})  # it shares them: they stay
    assert (prune.method.name, prune.method.k_step, prune.method.cg_iters) == ("snows-fast", 1, 9)
    with pytest.raises(SettingError, match="statistics is an option of mask-only, not of snows") as caught:
        resolve_settings(recipe=path, prune={"statistics": "block"})  # at its default too: given, it would be ignored
    assert caught.value.field == "statistics"


def test_which_method_owns_an_option_comes_from_each_methods_declared_options():
    @dataclass
    class KeepConfig(MethodConfig):
        name = "keep"
        keep_share: float = config_field(0.5, "share kept", minimum=0, maximum=1)

    class Keep(MaskOnly):
        config_class = KeepConfig

    METHODS["keep"] = Keep
    try:
        assert PruneConfig.from_dict({"sparsity": "2:4", "method": "keep", "keep_share": 0.25}).method.keep_share == 0.25
        with pytest.raises(SettingError, match="keep_share is an option of keep, not of snows"):
            PruneConfig.from_dict({"sparsity": "2:4", "keep_share": 0.25})
        with pytest.raises(SettingError, match="k_step is an option of snows and snows-fast, not of keep"):
            resolve_settings("my-model", prune={"sparsity": "2:4", "method": "keep", "k_step": 3})
        with pytest.raises(SettingError, match="keep_share must be from 0 to 1, got 2"):
            PruneConfig.from_dict({"sparsity": "2:4", "method": "keep", "keep_share": 2})
    finally:
        del METHODS["keep"]


@pytest.mark.parametrize("version", [True, 1.0, 3.0, "4", None, 0, 6])
def test_a_recipes_version_is_an_int_it_can_read(tmp_path, version):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"prune: {{sparsity: '2:4', config_version: {yaml_text(version)}}}\n")
    with pytest.raises(ValueError, match=r"prune\.config_version (must be an int|\d is not supported)"):
        load_recipe(path)


def yaml_text(value):
    import yaml

    return yaml.safe_dump(value).splitlines()[0]


def test_a_key_given_twice_is_refused_at_any_depth_and_named_with_its_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("prune:\n  sparsity: '2:4'\n  targets:\n  - {a: 1, b: 2}\n  - {c: 1,\n     c: 2}\n")
    with pytest.raises(ValueError, match=r"gives the key 'c' twice \(line 6\)"):
        read_recipe_yaml(path)
    path.write_text("prune: {sparsity: '2:4', 1: a, 1.0: b}\n")  # one key to the mapping built
    with pytest.raises(ValueError, match=r"gives the key 1.0 twice \(line 1\)"):
        load_recipe(path)
