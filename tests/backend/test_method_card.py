"""GET /api/models/{id}: every model's method card, from the catalogue (the backend builds no model and imports no
torch); and "Reproduce Table 1" queues exactly what the cards say: 224 px and fp32 for every row, the authors'
Keras settings for the three Keras CNNs only, the ViT-L/32 row on its 21k-then-1k weights."""
from core import catalogue
from core.config import paper_card

KERAS = {"vgg19", "densenet201", "resnet152"}


def test_every_model_has_a_card_and_an_unknown_one_is_404(api):
    for model in catalogue.CATALOGUE:
        r = api.get(f"/api/models/{model}")
        assert r.status_code == 200, (model, r.text)
        card = r.json()
        expected = paper_card(model)
        assert {k: card[k] for k in expected} == expected
        assert card["config"]["model"] == model and card["config"]["image_size"] == 224
    r = api.get("/api/models/no_such_net")
    assert r.status_code == 404 and "unknown model" in r.json()["detail"]
    assert "ModelCard" in api.get("/openapi.json").json()["components"]["schemas"]


def test_the_card_answers_what_the_issue_asks(api):
    card = api.get("/api/models/resnet152").json()
    assert (card["timm_id"], card["pretrained_tag"], card["image_size"], card["precision"]) == (
        "resnet152", "tv_in1k", 224, "fp32")
    assert (card["batch_size"], card["head_init"], card["head_l2"], card["bn_momentum"], card["adam_eps"]) == (
        512, "he_normal", 0.01, 0.01, 1e-7)
    assert card["trainable_modules"] == ["layer4", "heads.0"] and card["pooling"] == "max"
    assert (card["trainable_params"], card["paper_trainable_params"], card["count_matches_paper"]) == (
        15_491_850, 15_497_994, False)
    assert any("Stand-in" in d["what"] for d in card["deviations"]) and all(d["effect"] for d in card["deviations"])
    swin = api.get("/api/models/swin_base_patch4_window7_224").json()
    assert swin["batch_size"] == 256 and any("22k" in d["what"] for d in swin["deviations"])


def test_the_model_list_names_the_weights(api):
    models = {m["id"]: m for m in api.get("/api/models").json()}
    assert models["vit_large_patch32_384"]["weights_name"] == "vit_large_patch32_384.orig_in21k_ft_in1k"
    assert models["resnet152"]["pretrained_tag"] == "tv_in1k" and models["dm_nfnet_f6"]["native_size"] == 448
    assert {m for m, d in models.items() if d["keras"]} == KERAS
    assert models["vit_large_patch32_224"]["paper_name"] is None  # kept for runs stored before; not the paper's


def test_reproduce_table1_runs_the_cards(api):
    exps = api.post("/api/reproduce", json={"group": "t1", "overrides": {"epochs": 1}}).json()
    assert len(exps) == 10
    by_model = {e["config"]["model"]: e["config"] for e in exps}
    assert "vit_large_patch32_384" in by_model and "vit_large_patch32_224" not in by_model
    for model, cfg in by_model.items():
        card = paper_card(model)
        assert (cfg["image_size"], cfg["precision"], cfg["tf32"]) == (224, "fp32", True), model
        assert (cfg["head_init"], cfg["head_l2"], cfg["bn_momentum"], cfg["adam_eps"]) == (
            card["head_init"], card["head_l2"], card["bn_momentum"], card["adam_eps"]), model
        assert (cfg["head_l2"] == 0.01) == (model in KERAS) and cfg["batch_size"] == card["batch_size"]
    r = api.post("/api/experiments", json={"name": "x", "start": False,
                                           "config": {"model": "densenet201", "head_l2": 0.0}})
    assert r.json()["config"]["head_l2"] == 0.0 and r.json()["config"]["head_init"] == "he_normal"  # a choice wins


def test_a_configs_card_says_where_it_leaves_the_paper_preset(api):
    r = api.get("/api/models/densenet201?precision=bf16&head_l2=0&bn_momentum=&epochs=3")
    assert r.status_code == 200, r.text
    card = r.json()
    assert (card["precision"], card["head_l2"], card["bn_momentum"], card["epochs"]) == ("bf16", 0.0, None, 3)
    assert {d["option"]: (d["value"], d["paper"]) for d in card["config_deviations"]} == {
        "precision": ("bf16", "fp32"), "head_l2": (0.0, 0.01), "bn_momentum": (None, 0.01)}  # epochs: not a result
    assert next(row["value"] for row in card["rows"] if row["label"] == "Head L2") == "none"
    assert card["config"]["head_l2"] == 0.01  # the paper preset it is compared with
    bad = api.get("/api/models/densenet201?precision=fp64&no_such_option=1")
    assert bad.status_code == 422
    assert {tuple(d["loc"]) for d in bad.json()["detail"]} >= {("query", "precision"), ("query", "no_such_option")}


def test_an_fp16_card_names_the_gradient_scaler_and_the_gpus_it_is_for(api):
    """Issue 16: fp16 is the T4's fast path, a speed option off the paper's fp32 like bf16; the API takes it."""
    r = api.get("/api/models/deit_base_distilled_patch16_224?precision=fp16")
    assert r.status_code == 200, r.text
    card = r.json()
    assert card["precision"] == "fp16"
    assert {d["option"]: (d["value"], d["paper"]) for d in card["config_deviations"]} == {"precision": ("fp16", "fp32")}
    row = next(row["value"] for row in card["rows"] if row["label"] == "Precision")
    assert "float16 autocast with a dynamic gradient scaler" in row and "T4" in row
    r = api.post("/api/experiments", json={"name": "t4", "start": False, "config": {"precision": "fp16"}})
    assert r.status_code in (200, 201), r.text
    assert r.json()["config"]["precision"] == "fp16"
