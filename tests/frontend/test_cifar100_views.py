"""The job page's per-class views with CIFAR-100's 100 classes, in the browser: class names from the server
(GET /api/datasets, for the job's dataset), per-class bars sorted worst first with names on hover, a confusion
heatmap without 100 tick labels whose hover names the classes, the largest confusions as text, and "no paper number"
where the paper has none. A CIFAR-10 job beside it keeps its named axes and its paper number.

No worker trains here: the test publishes a worker's events (started, epochs, finished) on the lab's broker, so the
metrics are known exactly and the backend's ingest path is the real one."""
import pytest

from core import catalogue
from core.broker import EventPublisher
from core.protocol import EPOCH_ROW, epoch_row
from core.settings import Settings
from tests.lab import Lab, wait_for

from .conftest import shot

pytestmark = pytest.mark.browser

C100 = catalogue.DATASETS["cifar100"].classes
C10 = catalogue.DATASETS["cifar10"].classes
PAPER_MODEL = "deit_base_distilled_patch16_224"
CFG = {"model": PAPER_MODEL, "weights": "none", "epochs": 2, "batch_size": 16, "train_per_class": 2,
       "val_limit": 40, "image_size": 32}


def _acc(n):
    """Distinct accuracies, 0 for class 0: (37 i mod n) / n."""
    return [((37 * i) % n) / n for i in range(n)]


def _confusion(n, mistakes):
    m = [[5 if i == j else 0 for j in range(n)] for i in range(n)]
    for (t, p), c in mistakes.items():
        m[t][p] = c
    return m


def _row(epoch, n, mistakes):
    values = {m.name: None for m in EPOCH_ROW} | {
        "epoch": epoch, "train_loss": 2.0 / epoch, "train_acc": 0.3 * epoch, "val_loss": 2.5 / epoch,
        "val_acc": 0.25 * epoch, "lr": 1e-4, "seconds": 1.0, "train_seconds": 0.8, "images_per_s": 100.0,
        "per_class_acc": _acc(n), "confusion": _confusion(n, mistakes)}
    return epoch_row(**values)


def _finished_job(lab, name, dataset, n, mistakes) -> int:
    """A job whose 'worker' reported 2 epochs of n-class metrics and succeeded."""
    jid = lab.submit(name, **CFG, **{"dataset": dataset})
    attempt = lab.job(jid)["attempt"]
    ev = EventPublisher(Settings(home=lab.tmp / "home").broker_url, jid, attempt)
    try:
        ev.send("started", worker="fake@test", device="cpu")
        for e in (1, 2):
            ev.send("epoch", row=_row(e, n, mistakes))
        ev.send("finished", status="succeeded", error=None, summary={"status": "succeeded", "epochs_run": 2})
    finally:
        ev.close()
    wait_for(lambda: (j := lab.job(jid))["status"] == "succeeded" and j["epochs_done"] == 2, 30, f"job {jid} stored")
    return jid


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_cifar_dir):
    lab = Lab(tmp_path_factory.mktemp("c100-lab"), tiny_cifar_dir, redis=False)
    lab.start_backend()
    yield lab
    lab.close()


def _plot(page, pid):
    return page.evaluate(f"""(() => {{ const e = document.getElementById('{pid}'); const t = e.data[0];
        return {{ x: t.x, y: t.y, text: t.texttemplate, xticks: e.layout.xaxis.showticklabels,
                  yticks: e.layout.yaxis.showticklabels, title: e.layout.title.text,
                  names: e.data.map((d) => d.name || '') }} }})()""")


def _hover(page, pid, fx, fy) -> str:
    page.locator(f"#{pid}").scroll_into_view_if_needed()
    box = page.locator(f"#{pid} .nsewdrag").bounding_box()
    page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    page.wait_for_selector(f"#{pid} .hoverlayer .hovertext")
    text = page.text_content(f"#{pid} .hoverlayer .hovertext")
    page.mouse.move(0, 0)
    return text


def _open(page, lab, jid):
    page.goto(f"{lab.url}/#/job/{jid}")
    page.wait_for_function("() => ['plot-class', 'plot-confusion', 'plot-acc'].every((i) => {"
                           " const e = document.getElementById(i); return e && e.data && !e.hidden })")


def test_a_cifar100_job_shows_100_named_classes_readably_and_no_paper_number(lab, page):
    bear, beaver, man, boy = (C100.index(c) for c in ("bear", "beaver", "man", "boy"))
    jid = _finished_job(lab, "cifar-100 run", "cifar100", 100, {(bear, beaver): 5, (man, boy): 3})
    _open(page, lab, jid)

    bars = _plot(page, "plot-class")
    acc = _acc(100)
    assert sorted(bars["x"]) == sorted(C100) and len(bars["x"]) == 100  # the server's names, each once
    assert bars["y"] == sorted(acc)  # worst first
    assert [C100.index(x) for x in bars["x"]] == sorted(range(100), key=lambda i: acc[i])
    assert bars["x"][0] == "apple" and bars["xticks"] is False  # no 100 tick labels
    assert "100 classes, worst first" in bars["title"]
    best = C100[acc.index(0.99)]
    hover = _hover(page, "plot-class", 0.997, 0.5)  # the rightmost bar: the best class, named on hover
    assert f"{best}: 99.0%" in hover and "rank 100 of 100" in hover, hover

    heat = _plot(page, "plot-confusion")
    assert heat["x"] == list(C100) and heat["text"] == "" and heat["xticks"] is False and heat["yticks"] is False
    hover = _hover(page, "plot-confusion", 0.002, 0.002)  # top left cell: apple as apple
    assert "true: apple" in hover and "predicted: apple" in hover and "count: 5 of 5" in hover, hover

    top = page.eval_on_selector_all("#confusion-top li", "ls => ls.map((l) => l.textContent)")
    assert top[:2] == ["bear → beaver: 5 (50.0% of true bear)", "man → boy: 3 (37.5% of true man)"], top
    assert page.text_content("#class-worst").startswith("Hardest classes: apple 0.00%")
    assert page.text_content("#class-best").startswith(f"Easiest classes: {best} 99.00%")

    assert page.text_content("#paper-number") == "no paper number"
    line = page.text_content(".job-status-line")
    assert "CIFAR-100" in line and "95." not in line and "paper:" not in line, line
    assert not any(n.startswith("paper") for n in _plot(page, "plot-acc")["names"])  # no CIFAR-10 paper curve
    assert "cifar100 (paper: cifar10)" in page.text_content("#job-config")
    shot(page, "job-cifar100-views")
    page.click("#confusion-mode")  # row percentages still without cell text
    page.wait_for_function("document.getElementById('plot-confusion').data[0].zmax === 100")
    assert _plot(page, "plot-confusion")["text"] == ""
    assert not page.errors, page.errors


def test_a_cifar10_job_keeps_named_axes_and_its_paper_number(lab, page):
    jid = _finished_job(lab, "cifar-10 run", "cifar10", 10, {(3, 5): 4})
    _open(page, lab, jid)
    bars = _plot(page, "plot-class")
    assert bars["x"] == list(C10) and bars["xticks"] is not False  # label order, names on the axis
    heat = _plot(page, "plot-confusion")
    assert heat["x"] == list(C10) and heat["text"] == "%{text}"
    assert page.eval_on_selector_all("#confusion-top li", "ls => ls.map((l) => l.textContent)")[0] \
        == "cat → dog: 4 (44.4% of true cat)"
    paper = catalogue.paper_row(catalogue.get(PAPER_MODEL))
    line = page.text_content(".job-status-line")
    assert f"(paper: {paper['paper_name']}, {100 * paper['val_acc']:.2f}%)" in line, line
    assert page.query_selector("#paper-number") is None and page.query_selector("#class-worst") is None
    assert any(n.startswith("paper") for n in _plot(page, "plot-acc")["names"])
    assert not page.errors, page.errors
