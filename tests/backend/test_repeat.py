"""POST /api/experiments/{id}/repeat: the missing repeats of a config under the next unused seeds, in one group,
each with a queued job; asking again creates only what is missing; bounds and writes guarded like the others."""
from core.stats import repeat_key

from .conftest import TINY


def _experiment(api, **body):
    r = api.post("/api/experiments", json={"name": "tiny", "config": TINY, **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_repeats_differ_only_by_seed_and_stay_in_one_group(api):
    e = _experiment(api, config={**TINY, "seed": 3})
    r = api.post(f"/api/experiments/{e['id']}/repeat", json={"seeds": 4})
    assert r.status_code == 201, r.text
    out = r.json()
    made = out["created"]
    assert len(made) == 3 and out["seeds"] == [3, 4, 5, 6]
    assert out["group"] and api.get(f"/api/experiments/{e['id']}").json()["group"] == out["group"]  # given one
    assert [m["name"] for m in made] == ["tiny · seed 4", "tiny · seed 5", "tiny · seed 6"]
    for m in made:
        assert m["group"] == out["group"] and m["dry_run"] is False
        assert {k: v for k, v in m["config"].items() if k != "seed"} == {k: v for k, v in e["config"].items()
                                                                           if k != "seed"}
        assert repeat_key(m["config"]) == repeat_key(e["config"])
        assert [j["status"] for j in m["jobs"]] == ["queued"]
    assert len({m["config"]["seed"] for m in made} | {3}) == 4

    again = api.post(f"/api/experiments/{made[0]['id']}/repeat", json={"seeds": 5}).json()  # from a repeat
    assert [m["name"] for m in again["created"]] == ["tiny · seed 7"] and again["seeds"] == [3, 4, 5, 6, 7]
    assert api.post(f"/api/experiments/{e['id']}/repeat", json={"seeds": 3}).json()["created"] == []
    assert len(api.get("/api/experiments", params={"group": out["group"]}).json()) == 5


def test_an_existing_group_is_kept_and_other_configs_in_it_do_not_count(api):
    e = _experiment(api, group="sweep")
    _experiment(api, group="sweep", name="other lr", config={**TINY, "lr": 1e-3, "seed": 1})
    out = api.post(f"/api/experiments/{e['id']}/repeat", json={"seeds": 2}).json()
    assert out["group"] == "sweep" and out["seeds"] == [0, 1]  # seed 1 of another config is no repeat of this one
    assert out["created"][0]["config"]["seed"] == 1 and out["created"][0]["config"]["lr"] == TINY.get("lr", 1e-4)


def test_a_dry_run_repeats_as_a_dry_run(api):
    e = _experiment(api, dry_run=True)
    made = api.post(f"/api/experiments/{e['id']}/repeat", json={"seeds": 2}).json()["created"]
    assert made[0]["dry_run"] is True and made[0]["config"]["epochs"] == e["config"]["epochs"]


def test_bounds_name_the_field(api):
    e = _experiment(api)
    for bad in ({"seeds": 1}, {"seeds": 21}, {"seeds": "many"}, {}, {"seeds": 3, "extra": 1}):
        r = api.post(f"/api/experiments/{e['id']}/repeat", json=bad)
        assert r.status_code == 422, bad
        assert any(d["loc"][:2] == ["body", "seeds"] or d["loc"][-1] in ("seeds", "extra")
                   for d in r.json()["detail"]), r.json()
    assert api.post("/api/experiments/999/repeat", json={"seeds": 2}).status_code == 404
    assert len(api.get("/api/experiments").json()) == 1


def test_a_lab_with_a_token_requires_it(api, monkeypatch):
    from core.settings import get_settings
    e = _experiment(api)
    monkeypatch.setenv("BLOCKLAB_TOKEN", "s3cret")
    get_settings.cache_clear()
    assert api.post(f"/api/experiments/{e['id']}/repeat", json={"seeds": 2}).status_code == 401
    assert len(api.get("/api/experiments", headers={"X-BlockLab-Token": "s3cret"}).json()) == 1
    r = api.post(f"/api/experiments/{e['id']}/repeat", json={"seeds": 2}, headers={"X-BlockLab-Token": "s3cret"})
    assert r.status_code == 201 and len(r.json()["created"]) == 1


def test_past_the_largest_seed_the_smallest_unused_one(api):
    e = _experiment(api, config={**TINY, "seed": 2**31 - 1})
    out = api.post(f"/api/experiments/{e['id']}/repeat", json={"seeds": 2}).json()
    assert out["seeds"] == [0, 2**31 - 1] and out["created"][0]["name"] == "tiny · seed 0"
