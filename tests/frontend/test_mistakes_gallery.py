"""The mistakes gallery in the browser, on a real lab whose worker trained a tiny model on a folder of generated
images (two of its classes look alike, so there are mistakes; one class folder is named like HTML): thumbnails of
the misclassified validation images with true class, prediction, confidence and epoch 1's verdict; filters by true
and predicted class; a click on a confusion-matrix cell opens that cell's images; paging. The form lists the
folder as a dataset. Screenshots at 1400 and 800 px in tests/artifacts."""
import pytest

from tests.imagefolders import write_folder
from tests.lab import Lab

from .conftest import ARTIFACTS, shot

pytestmark = pytest.mark.browser

EVIL = "<img src=x onerror=document.title='pwned'>"
CLASSES = ("green", "red", EVIL, "grey")  # EVIL and grey are both grey: the model confuses them
TINY = {"model": "deit_tiny_patch16_224", "weights": "none", "image_size": 32, "batch_size": 16, "epochs": 2,
        "dataset": "folder:photos"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("gallery-data")
    write_folder(data, "photos", train=10, val=8, classes=CLASSES)
    lab = Lab(tmp_path_factory.mktemp("gallery-lab"), data, redis=False)
    lab.start_backend()
    lab.new_worker()
    jid = lab.submit("my photos", **TINY)
    job = lab.wait_status(jid, {"succeeded", "failed"}, timeout=300)
    assert job["status"] == "succeeded", (job.get("error"), lab.logs())
    yield lab, jid
    lab.close()


def _gallery(page, lab, jid):
    page.goto(f"{lab.url}/#/job/{jid}")
    page.wait_for_selector("#mistakes-grid figure.mistake")
    page.locator("#job-mistakes").scroll_into_view_if_needed()  # the thumbnails load lazily, when in view
    page.wait_for_function("() => [...document.querySelectorAll('#mistakes-grid img')].every("
                           "(i) => i.complete && i.naturalWidth > 0)")


def test_the_gallery_shows_filters_and_opens_a_confusion_cell(trained, browser):
    lab, jid = trained
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        _gallery(page, lab, jid)
        api = lab.client.get(f"/api/jobs/{jid}/mistakes", params={"per_page": 24}).json()
        figs = page.locator("#mistakes-grid figure.mistake")
        assert figs.count() == len(api["items"]) > 0
        first = api["items"][0]
        cap = figs.nth(0).inner_text()
        assert f"true {first['true']}" in cap and f"predicted {first['pred']}" in cap
        assert f"({100 * first['confidence']:.1f}%)" in cap and "epoch 1" in cap
        summary = page.text_content("#mistakes-summary")
        assert f"{api['mistakes_all']} of {api['images']} validation images misclassified" in summary
        # The class named like HTML is text: no element was made of it, no script ran.
        assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert page.title() != "pwned" and EVIL in page.inner_text("#mistakes-true")
        shot(page, "mistakes-gallery-1400")

        # Filter by the true class the model confuses, then clear it.
        evil_index = api["classes"].index(EVIL)
        page.select_option("#mistakes-true", str(evil_index))
        page.wait_for_function("(t) => [...document.querySelectorAll('#mistakes-grid figure .mistake-true')]"
                               ".every((e) => e.textContent === 'true ' + t)", arg=EVIL)
        want = lab.client.get(f"/api/jobs/{jid}/mistakes", params={"true": evil_index}).json()["total"]
        assert f"; {want} with true {EVIL}" in page.text_content("#mistakes-summary")
        page.select_option("#mistakes-true", "")

        # A click on a confusion-matrix cell (shown: the best epoch) opens that cell's images.
        best = lab.job(jid)["best_epoch"]
        confusion = next(m for m in lab.client.get(f"/api/jobs/{jid}/metrics").json()
                         if m["epoch"] == best)["confusion"]
        t, p = max(((i, j) for i in range(4) for j in range(4) if i != j), key=lambda c: confusion[c[0]][c[1]])
        assert confusion[t][p] > 0
        page.locator("#plot-confusion").scroll_into_view_if_needed()
        xy = page.evaluate("""([t, p]) => { const gd = document.getElementById('plot-confusion');
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.l2p(p), box.top + ya._offset + ya.l2p(t)]; }""", [t, p])
        page.mouse.click(*xy)
        page.wait_for_function("([t, p]) => document.getElementById('mistakes-true').value === String(t) && "
                               "document.getElementById('mistakes-pred').value === String(p)", arg=[t, p])
        page.wait_for_function("(n) => document.querySelectorAll('#mistakes-grid figure.mistake').length === n",
                               arg=min(confusion[t][p], 24))
        assert f"; {confusion[t][p]} with true" in page.text_content("#mistakes-summary")
        shot(page, "mistakes-gallery-cell-1400")
        page.locator("#job-mistakes").screenshot(path=str(ARTIFACTS / "mistakes-gallery-cell-card-1400.png"))
        assert not errors, errors
    finally:
        ctx.close()


def test_the_gallery_fits_800_px_and_pages(trained, browser):
    lab, jid = trained
    ctx = browser.new_context(viewport={"width": 800, "height": 1000})
    page = ctx.new_page()
    try:
        _gallery(page, lab, jid)
        total = lab.client.get(f"/api/jobs/{jid}/mistakes").json()["total"]
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 800, width
        pages = -(-total // 24)
        assert page.text_content("#mistakes-page").strip() == f"page 1 of {pages}"
        assert page.is_disabled("#mistakes-prev") and page.is_disabled("#mistakes-next") == (pages == 1)
        page.locator("#job-mistakes").scroll_into_view_if_needed()
        shot(page, "mistakes-gallery-800")
        page.locator("#job-mistakes").screenshot(path=str(ARTIFACTS / "mistakes-gallery-card-800.png"))
        # The form offers the folder as a dataset.
        page.goto(f"{lab.url}/#/new")
        page.wait_for_selector("#f-dataset option[value='folder:photos']", state="attached")
        # A clone of the job keeps its folder as the dataset.
        page.goto(f"{lab.url}/#/new?clone={jid}")
        page.wait_for_function("() => document.getElementById('f-dataset').value === 'folder:photos'")
    finally:
        ctx.close()
