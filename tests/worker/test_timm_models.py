"""Any timm model end to end on the worker side: the shipped name list matches the installed timm, and a model
outside the catalogue trains through run() and the command line, its build reported (where the generic last-block
rule cut, the trainable count) for its card."""
from __future__ import annotations

import json

import pytest

from core import catalogue
from tools import gen_timm_models
from worker import finetune, notebook

MODEL = "tf_efficientnet_lite2"  # not in the catalogue
TINY = dict(weights="none", epochs=1, batch_size=16, image_size=32, train_per_class=2, val_limit=20)


def test_the_shipped_name_list_is_the_installed_timms_registry():
    """core/timm_models.json is what tools/gen_timm_models.py writes for this timm: run it after upgrading timm."""
    shipped, installed = json.loads(catalogue.TIMM_MODELS_FILE.read_text()), gen_timm_models.registry()
    if installed["timm_version"] == shipped["timm_version"]:
        assert shipped == installed
    else:  # another timm (the oldest supported stack): its registry differs; the worker checks a name against it
        assert set(catalogue.CATALOGUE) <= set(installed["models"])
    assert MODEL in catalogue.timm_models() and catalogue.get(MODEL) is None
    assert set(catalogue.CATALOGUE) <= catalogue.timm_models()


def test_a_non_catalogue_model_trains_through_run_and_the_command_line(tiny_cifar_dir, tmp_path):
    infos = []
    from worker.engine import train
    real = train.run

    def watching(cfg, paths, cb=None, *a, **kw):
        cb.on_info = infos.append
        return real(cfg, paths, cb, *a, **kw)
    train.run, saved = watching, train.run
    try:
        r = notebook.run(MODEL, data_dir=tiny_cifar_dir, download=False, show=False, out=tmp_path / "n", **TINY)
    finally:
        train.run = saved
    assert r.status == "succeeded" and r.summary["paper_val_acc"] is None
    info = infos[0]
    assert info["unfreeze_from"] and info["trainable_modules"][0] == info["unfreeze_from"]
    assert info["trainable_params"] > 0 and info["blocks"] > 1
    card = notebook.method_card(r.config, built=info)
    rows = {x["label"]: x["value"] for x in card["rows"]}
    assert f"cut at {info['unfreeze_from']}" in rows["Trainable depth"] and "not in the paper" in rows["Model"]
    code = finetune.main(["--model", MODEL, "--data-dir", str(tiny_cifar_dir), "--out", str(tmp_path / "c"),
                          "--json", *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]])
    assert code == 0 and (tmp_path / "c" / "summary.json").is_file()


def test_a_name_timm_lacks_is_a_setup_error_in_each_front_ends_terms(tiny_cifar_dir, tmp_path):
    with pytest.raises(notebook.RunError, match="model='deit_tiny_patch16_224'"):
        notebook.run("tf_efficientnet_lite9", data_dir=tiny_cifar_dir, show=False, out=tmp_path / "n", **TINY)


def test_the_worker_reports_a_local_file_of_any_timm_model_so_the_plan_sees_it(tmp_path):
    """The plan's preflight reads the worker's report: a non-catalogue model's local file must be in it, or the
    plan would block a run that can go, and a file that is not there must not be."""
    from worker.queue.self_report import weights_present
    (tmp_path / f"{MODEL}.safetensors").write_bytes(b"x")
    (tmp_path / "not_a_timm_model.pth").write_bytes(b"x")
    found = weights_present(tmp_path)
    assert found[MODEL]["local"] == str(tmp_path / f"{MODEL}.safetensors")
    assert "not_a_timm_model" not in found and found["deit_tiny_patch16_224"]["local"] is None
