"""GET /api/datasets: the datasets and their class names come from core.catalogue.DATASETS, so the browser's
per-class views never list them again; CIFAR-100 is served with its 100 fine labels and no paper number."""
from core import catalogue

from .conftest import TINY


def test_every_dataset_is_served_with_its_classes_in_label_order(api):
    served = {d["id"]: d for d in api.get("/api/datasets").json()}
    assert list(served) == list(catalogue.DATASETS)
    for d in catalogue.DATASETS.values():
        assert served[d.id] == {"id": d.id, "title": d.title, "classes": list(d.classes),
                                "num_classes": len(d.classes), "in_paper": d.in_paper, "train_size": d.train_size,
                                "val_size": d.val_size}
    c100 = served["cifar100"]
    assert c100["num_classes"] == 100 and c100["classes"][:2] == ["apple", "aquarium_fish"]
    assert c100["classes"][-1] == "worm" and not c100["in_paper"]
    assert served["cifar10"]["classes"][0] == "airplane" and served["cifar10"]["in_paper"]


def test_a_cifar100_job_names_its_dataset_and_has_no_paper_number(api):
    r = api.post("/api/experiments", json={"name": "c100", "config": {**TINY, "dataset": "cifar100"}})
    assert r.status_code == 201, r.text
    job = api.get(f"/api/jobs/{r.json()['jobs'][0]['id']}").json()
    assert job["config"]["dataset"] == "cifar100" and job["paper_val_acc"] is None
    paper_model = {**TINY, "model": "deit_base_distilled_patch16_224"}
    r = api.post("/api/experiments", json={"name": "c10", "config": paper_model})
    assert r.status_code == 201, r.text
    assert api.get(f"/api/jobs/{r.json()['jobs'][0]['id']}").json()["paper_val_acc"] > 0.9
