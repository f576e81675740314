"""Model loading: factory plus weights checks, safe .pt loading, pickle refusal and factory import errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgepack.errors import ModelLoadError
from edgepack.model.load import load_model, read_state_dict
from edgepack.recipe.load import parse_recipe

FACTORY_MODULE = "ep_unit_tinynet"  # unique: import_object caches modules by name in sys.modules
FACTORY_SOURCE = '''
from torch import nn


def build(hidden=4):
    return nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def not_a_module():
    return "a string"


def explodes(**kwargs):
    raise RuntimeError("no GPU here")
'''


@pytest.fixture(scope="module")
def factory_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("factory")
    (folder / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    return folder


def make_recipe(base_dir, model: dict):
    data = {
        "name": "tiny",
        "model": model,
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}],
        "calibration": {"path": "calib.npz"},
        "evaluation": {"path": "eval.npz"},
    }
    return parse_recipe(data, source="recipe.yaml", base_dir=base_dir)


def seeded_state(hidden: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    return {key: value.clone() for key, value in net.state_dict().items()}


def load_with(factory_dir, weights, factory: str = "build", **model):
    recipe = make_recipe(factory_dir, {"factory": f"{FACTORY_MODULE}:{factory}", "weights": str(weights), **model})
    return load_model(recipe)


def test_safetensors_weights_load(factory_dir, tmp_path):
    state = seeded_state()
    save_file(state, tmp_path / "w.safetensors")
    loaded = load_with(factory_dir, tmp_path / "w.safetensors")
    assert loaded.kind == "factory" and loaded.onnx_path is None
    assert not loaded.module.training
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert f"{FACTORY_MODULE}:build" in loaded.description


def test_factory_kwargs_are_passed(factory_dir, tmp_path):
    save_file(seeded_state(hidden=6), tmp_path / "w.safetensors")
    loaded = load_with(factory_dir, tmp_path / "w.safetensors", factory_kwargs={"hidden": 6})
    assert loaded.module[0].out_features == 6


def test_missing_key_named(factory_dir, tmp_path):
    state = seeded_state()
    del state["2.bias"]
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match=r"weights do not fit the model: missing keys: 2\.bias$"):
        load_with(factory_dir, tmp_path / "w.safetensors")


def test_unexpected_key_named(factory_dir, tmp_path):
    state = seeded_state()
    state["3.weight"] = torch.zeros(2, 2)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match=r"unexpected keys: 3\.weight$"):
        load_with(factory_dir, tmp_path / "w.safetensors")


def test_shape_mismatch_named(factory_dir, tmp_path):
    save_file(seeded_state(hidden=5), tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError) as info:
        load_with(factory_dir, tmp_path / "w.safetensors")
    text = str(info.value)
    assert str(tmp_path / "w.safetensors") in text
    assert "shape mismatch: 0.weight: file [5, 3] vs model [4, 3]" in text
    assert "2.weight: file [2, 5] vs model [2, 4]" in text
    assert "missing keys" not in text and "unexpected keys" not in text


def test_many_problems_are_summarised(factory_dir, tmp_path):
    state = {f"extra.{i}": torch.zeros(1) for i in range(5)}
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError) as info:
        load_with(factory_dir, tmp_path / "w.safetensors")
    text = str(info.value)
    assert "missing keys: 0.weight, 0.bias, 2.weight (+1 more)" in text
    assert "unexpected keys: extra.0, extra.1, extra.2 (+2 more)" in text


@pytest.mark.parametrize("wrap", [False, True])
def test_pt_state_dict_loads_with_weights_only(factory_dir, tmp_path, wrap):
    state = seeded_state()
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, tmp_path / "w.pt")
    loaded = load_with(factory_dir, tmp_path / "w.pt")
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    reference = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    reference.load_state_dict(state)
    torch.testing.assert_close(loaded.module(x), reference(x))


def test_pickled_module_in_pt_refused(factory_dir, tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.save(module, tmp_path / "whole.pt")
    with pytest.raises(ModelLoadError) as info:
        load_with(factory_dir, tmp_path / "whole.pt")
    text = str(info.value)
    assert "not a plain state dict" in text and "weights_only" in text
    assert "allow_pickle: true" in text


def test_pickled_module_loads_when_allowed(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.save(module, tmp_path / "whole.pt")
    loaded = load_model(make_recipe(tmp_path, {"pickle": "whole.pt", "allow_pickle": True}))
    assert loaded.kind == "pickle" and isinstance(loaded.module, torch.nn.Sequential)
    assert not loaded.module.training
    torch.save({"not": "a module"}, tmp_path / "dict.pt")
    with pytest.raises(ModelLoadError, match="unpickled a dict, expected a torch.nn.Module"):
        load_model(make_recipe(tmp_path, {"pickle": "dict.pt", "allow_pickle": True}))


def test_non_tensor_pt_refused(factory_dir, tmp_path):
    torch.save({"0.weight": [1, 2, 3]}, tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match="expected a mapping of parameter names to tensors"):
        load_with(factory_dir, tmp_path / "w.pt")


def test_unreadable_weights_refused(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match="weights file not found"):
        read_state_dict(tmp_path / "absent.pt")


def test_factory_import_failure_names_factory(factory_dir, tmp_path):
    save_file(seeded_state(), tmp_path / "w.safetensors")
    weights = str(tmp_path / "w.safetensors")
    recipe = make_recipe(factory_dir, {"factory": "ep_unit_no_such_module:build", "weights": weights})
    with pytest.raises(ModelLoadError, match=r"cannot import model factory 'ep_unit_no_such_module:build': "
                                             r"ModuleNotFoundError"):
        load_model(recipe)
    with pytest.raises(ModelLoadError, match=rf"cannot import model factory '{FACTORY_MODULE}:missing'.*no attribute"):
        load_with(factory_dir, tmp_path / "w.safetensors", factory="missing")


def test_factory_that_raises_or_returns_junk(factory_dir, tmp_path):
    save_file(seeded_state(), tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match=r"'ep_unit_tinynet:explodes' raised RuntimeError: no GPU here"):
        load_with(factory_dir, tmp_path / "w.safetensors", factory="explodes")
    with pytest.raises(ModelLoadError, match="returned str, expected a torch.nn.Module"):
        load_with(factory_dir, tmp_path / "w.safetensors", factory="not_a_module")


def test_onnx_source_is_checked(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(tmp_path / "m.onnx"), dynamo=False,
                          input_names=["x"], output_names=["y"])
    loaded = load_model(make_recipe(tmp_path, {"onnx": "m.onnx"}))
    assert loaded.kind == "onnx" and loaded.module is None and loaded.onnx_path == tmp_path / "m.onnx"
    recipe = parse_recipe({**make_recipe(tmp_path, {"onnx": "m.onnx"}).model_dump(mode="json"),
                           "inputs": [{"name": "features", "dtype": "float32", "shape": ["batch", 3]}]},
                          source="recipe.yaml", base_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"ONNX inputs are \['x'\], the recipe declares \['features'\]"):
        load_model(recipe)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(make_recipe(tmp_path, {"onnx": "junk.onnx"}))
    with pytest.raises(ModelLoadError, match="ONNX model not found"):
        load_model(make_recipe(tmp_path, {"onnx": "absent.onnx"}))


def test_factory_is_imported_from_the_recipe_folder(tmp_path):
    for variant, width in (("first", 2), ("second", 5)):
        folder = tmp_path / variant
        folder.mkdir()
        (folder / "ep_unit_samename.py").write_text(
            f"from torch import nn\n\ndef build():\n    return nn.Linear(3, {width})\n")
        save_file(torch.nn.Linear(3, width).state_dict(), folder / "w.safetensors")
        loaded = load_model(make_recipe(folder, {"factory": "ep_unit_samename:build", "weights": "w.safetensors"}))
        assert loaded.module.out_features == width
