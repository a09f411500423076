"""The phase-transition explorer in a real browser: the Voila app and the notebook in JupyterLab.

Each server binds 127.0.0.1 on a free port and is torn down after its test. Headless Chromium (Debian's
``chromium`` package) is driven by Playwright's Python package with ``executable_path`` (Playwright's
own browser download is never used). Requests leaving localhost are blocked and recorded, so the test
also shows that the views need no CDN. Screenshots go to the test's tmp_path and outputs/screenshots/.

The widget logic itself (no browser) is tested first, so a failure says which side broke.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from test_phase import write_study

from ltnb.analysis import explore

CHROMIUM = os.environ.get("LTNB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
    or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                                    "chromium chromium-driver); the browser tests need it")
SHOTS = ROOT / "outputs" / "screenshots"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("phase") / "study")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server we started (its whole process group when it has its own), then kill if stuck."""
    if proc.poll() is not None:
        return
    group = os.getpgid(proc.pid) == proc.pid
    (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def offline_page(browser, blocked: list):
    """A page that may only talk to 127.0.0.1; anything else is aborted and recorded in ``blocked``."""
    page = browser.new_page(viewport={"width": 1500, "height": 1200})

    def route(r):
        if r.request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page


def html_of(page, selector: str) -> str:
    return page.locator(selector).first.inner_html()


def wait_changed(page, selector: str, before: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = html_of(page, selector)
        if now != before:
            return now
        page.wait_for_timeout(200)
    raise AssertionError(f"{selector} did not change within {timeout:.0f} s")


# ---------------------------------------------------------------- no browser: the widget logic

def test_explorer_widgets_update_every_view(study):
    app = explore.app(study)
    c, v = app.controls, app.views
    assert list(c["pair"].options) == ["movies", "products", "products->movies", "obtain: pooled over 2 domains"]
    before = {k: w.value for k, w in v.items()}
    assert "transition not detected" in before["estimate"] and before["accuracy"].startswith("<svg")
    assert "detectable effect" in before["estimate"]
    c["pair"].value = "products"
    assert "transition 96.8%" in v["estimate"].value and "onset 96.8%" in v["accuracy"].value
    assert "collapse points" in v["estimate"].value and "(93.75% exact)" in v["estimate"].value
    after = {k: w.value for k, w in v.items()}
    assert all(after[k] != before[k] for k in ("estimate", "accuracy", "gap", "spread", "table"))
    for name, value in (("mode", explore.SEEDS), ("alpha", 0.1)):
        old = v["accuracy"].value + v["gap"].value + v["table"].value + v["estimate"].value
        c[name].value = value
        assert v["accuracy"].value + v["gap"].value + v["table"].value + v["estimate"].value != old, name
    app._zoom(0.9)
    assert c["rounds"].value == (6, 12) and "<td>5</td>" not in v["table"].value
    c["strategies"].value = ("reset",)
    assert "TICKET-RANDOM" not in v["accuracy"].value and "TICKET-RESET" in v["accuracy"].value
    c["pair"].value = "obtain: pooled over 2 domains"
    assert "pooled over domains or pairs (seed = unit)" in v["estimate"].value


def test_explorer_on_an_empty_study_says_so(tmp_path):
    (tmp_path / "obtain").mkdir()
    app = explore.app(tmp_path)
    assert "No obtain or transfer result rows" in app.views["estimate"].value


def test_study_comes_from_query_string_then_env(monkeypatch):
    monkeypatch.delenv(explore.STUDY_ENV, raising=False)
    monkeypatch.delenv("QUERY_STRING", raising=False)
    assert explore.study_from_env("outputs/demo") == "outputs/demo" and not explore.app_mode()
    monkeypatch.setenv(explore.STUDY_ENV, "/x/study")
    assert explore.study_from_env("outputs/demo") == "/x/study" and explore.app_mode()
    monkeypatch.setenv("QUERY_STRING", "study=study&x=1")  # the served study, by name
    assert explore.study_from_env("outputs/demo") == "/x/study"
    monkeypatch.setenv("QUERY_STRING", "study=%2Fy%2Fother&x=1")  # any other folder is refused
    with pytest.raises(explore.StudyRefused, match="serves the study 'study' only"):
        explore.study_from_env("outputs/demo")


def test_serve_names_a_missing_study(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        explore.serve(tmp_path / "nope", wait=False)
    cmd = explore.voila_command("nb.ipynb", port=1234)
    assert "--port=1234" in cmd and "--Voila.ip=127.0.0.1" in cmd and "--no-browser" in cmd


# ---------------------------------------------------------------- Voila app in Chromium

@needs_chromium
def test_voila_app_in_chromium(study, browser, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = explore.serve(study, port=port, wait=False)
    try:
        explore.wait_for_http(url, proc=proc, timeout=60)
        blocked = []
        page = offline_page(browser, blocked)
        page.goto(url, timeout=120_000)  # Voila renders the notebook before the page loads
        page.wait_for_selector(".ltnb-accuracy svg", timeout=120_000)
        # an app: controls and views, no code
        assert page.locator(".jp-CodeMirrorEditor, .cm-editor").count() == 0
        assert "explore.app(" not in page.content()
        assert "movies: reset - random: transition not detected" in page.inner_text(".ltnb-estimate")
        acc, gap, table = (html_of(page, s) for s in (".ltnb-accuracy", ".ltnb-gap", ".ltnb-table"))
        assert "movies: test accuracy" in acc and "<svg" in acc
        shoot(page, tmp_path, "voila_movies")

        # choose another domain: every view changes, the estimate is drawn on the chart
        page.locator(".widget-dropdown", has_text="domain / pair").locator("select").select_option("products")
        acc2 = wait_changed(page, ".ltnb-accuracy", acc)
        assert "products: test accuracy" in acc2 and "onset 96.8%" in acc2
        assert "products: reset - random" in wait_changed(page, ".ltnb-gap", gap)
        assert "<td>96.8</td>" in wait_changed(page, ".ltnb-table", table)
        page.wait_for_function("() => document.querySelector('.ltnb-estimate').innerText"
                               ".includes('products: reset - random: transition 96.8%')", timeout=30_000)

        # zoom into the high-sparsity end: the table starts at round 6 (92.5%)
        table2 = html_of(page, ".ltnb-table")
        page.get_by_role("button", name="zoom: >= 90% sparsity").click()
        wait_changed(page, ".ltnb-table", table2)
        first = page.locator(".ltnb-table tbody tr").first.locator("td")
        assert [first.nth(0).inner_text(), first.nth(1).inner_text()] == ["6", "92.5"]
        shot = shoot(page, tmp_path, "voila_products_zoomed")
        assert shot.stat().st_size > 10_000
        assert not [u for u in blocked if "vega" in u or "altair" in u], blocked  # charts need no CDN
    finally:
        stop(proc)


# ---------------------------------------------------------------- the notebook in JupyterLab

@needs_chromium
def test_notebook_runs_in_jupyterlab(study, browser, tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.read(ROOT / "notebooks" / explore.NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('study_dir = "outputs/demo"', f"study_dir = {str(study)!r}")
    assert repr(str(study)) in params.source
    nbformat.write(nb, root / explore.NOTEBOOK)  # a copy: JupyterLab may save outputs into it
    proc, log, port, token = _start_lab(root, tmp_path)
    try:
        blocked = []
        page = offline_page(browser, blocked)
        page.goto(f"http://127.0.0.1:{port}/lab/tree/{explore.NOTEBOOK}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                               "&& window.jupyterapp.shell.currentWidget.sessionContext "
                               "&& window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=60_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector(".ltnb-accuracy svg", timeout=120_000)
        assert "movies: reset - random: transition not detected" in page.inner_text(".ltnb-estimate")
        # the last cell (not in app mode) shows the findings and the measured transition of every domain and pair
        page.wait_for_function("() => [...document.querySelectorAll('.jp-OutputArea-output table')]"
                               ".some(t => t.innerText.includes('96.8%'))", timeout=60_000)
        assert "the paper's findings, tested" in page.inner_text(".jp-Notebook")
        acc = html_of(page, ".ltnb-accuracy")
        page.locator(".ltnb-accuracy").scroll_into_view_if_needed()
        page.get_by_role("button", name="each seed").click()
        acc2 = wait_changed(page, ".ltnb-accuracy", acc)
        assert acc2.count("<path") > acc.count("<path")  # one line per seed now
        shoot(page, tmp_path, "jupyterlab_each_seed")
        # the notebook writes nothing under report/: the transitions and verdicts are the report stage's alone
        assert not (study / "report" / "phase_transition.csv").exists() and not (study / "report" / "findings.csv").exists()
        assert not [u for u in blocked if "vega" in u or "altair" in u], blocked
    finally:
        stop(proc)
        log.close()


# ---------------------------------------------------------------- the shipped demo rows, no study needed

def test_the_shipped_demo_rows_are_offered_beside_the_studies(tmp_path, monkeypatch):
    """Issue 29, item 2: an outputs folder with no study yet opens on the demo's shipped result rows,
    labelled with their date and machine; with studies, the shipped rows are one choice among them."""
    monkeypatch.delenv(explore.STUDY_ENV, raising=False)
    monkeypatch.delenv("QUERY_STRING", raising=False)
    monkeypatch.setenv(explore.OUTPUTS_ENV, str(tmp_path))
    assert explore.study_from_env("outputs/demo") == explore.SHIPPED
    app = explore.page("outputs/demo")
    info = explore.shipped_info()
    assert len(app.rows) == info["rows"] == 1260 and app.study == explore.SHIPPED
    assert info["date"] in app.note and "not computed on this machine" in app.note and info["machine"] in app.note
    assert "products: reset - random" in app.views["estimate"].value or "transition" in app.views["estimate"].value
    write_study(tmp_path / "mine")  # a study of the user's own: both are offered
    with pytest.raises(explore.StudyRefused, match=r"\?study=mine, \?study=shipped-demo"):
        explore.study_from_env("outputs/demo")
    monkeypatch.setenv("QUERY_STRING", "study=shipped-demo")
    assert explore.study_from_env("outputs/demo") == explore.SHIPPED
    monkeypatch.setenv("QUERY_STRING", "study=mine")
    assert explore.study_from_env("outputs/demo") == str(tmp_path / "mine")
    monkeypatch.delenv(explore.OUTPUTS_ENV)
    monkeypatch.delenv("QUERY_STRING")
    assert explore.worked_example(explore.SHIPPED)[1].shape == app.rows.shape  # the notebook, outside the app
    with pytest.raises(FileNotFoundError, match="study_dir = 'outputs/nope'.*study_dir = 'shipped-demo'"):
        explore.page("outputs/nope")


@needs_chromium
def test_voila_serves_the_shipped_rows_on_a_fresh_clone_in_seconds(browser, tmp_path):
    """`ltnb explore` with no study yet (an empty outputs folder): the first page is the shipped demo
    rows' explorer, labelled, with its charts; the time from starting the server to the first chart is
    printed (docs/batches.md reports it)."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    port = free_port()
    start = time.monotonic()
    proc = explore.serve(outputs, port=port, wait=False)
    try:
        explore.wait_for_http(f"http://127.0.0.1:{port}/", proc=proc, timeout=60)
        blocked = []
        page = offline_page(browser, blocked)
        page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
        page.wait_for_selector(".ltnb-accuracy svg", timeout=120_000)
        first_view = time.monotonic() - start
        print(f"\nexplorer on the shipped demo rows: first chart {first_view:.1f} s after the server started")
        note = page.inner_text(".ltnb-note")
        assert "The shipped demo rows" in note and "2026-12-03" in note and "not computed on this machine" in note
        assert "products: test accuracy" in html_of(page, ".ltnb-accuracy")
        shoot(page, tmp_path, "voila_shipped_demo")
        assert not [u for u in blocked if "vega" in u or "altair" in u], blocked
        assert first_view < 90, first_view
    finally:
        stop(proc)


# ---------------------------------------------------------------- 03 and 07 in JupyterLab after the smoke plan

def _start_lab(root: Path, tmp_path: Path):
    port, token = free_port(), "ltnb-test-token"
    env = {k: v for k, v in os.environ.items() if k not in (explore.STUDY_ENV, explore.OUTPUTS_ENV, "QUERY_STRING")}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--allow-root", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    labconfig = tmp_path / "cfg" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text('{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)  # every cell in the page, not only those scrolled into view
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        explore.wait_for_http(f"http://127.0.0.1:{port}/api?token={token}", proc=proc, timeout=90)
    except (RuntimeError, TimeoutError) as e:
        log.flush()
        stop(proc)
        raise AssertionError(f"{e}; JupyterLab's log ends:\n{(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
    return proc, log, port, token


def _run_all(page, port: int, token: str, name: str) -> None:
    # a workspace of its own, reset: no other notebook reopened from an earlier page, no dialog about it
    page.goto(f"http://127.0.0.1:{port}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=90_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def _wait_idle(page, timeout_ms: int = 180_000) -> None:
    """Every cell has run: no cell shows [*] and the kernel is idle."""
    page.wait_for_function("() => { const w = window.jupyterapp.shell.currentWidget;"
                           " const k = w.sessionContext.session.kernel;"
                           " const busy = [...document.querySelectorAll('.jp-InputPrompt')].some(p => p.innerText.includes('*'));"
                           " return k && k.status === 'idle' && !busy; }", timeout=timeout_ms)


@needs_chromium
def test_obtain_and_the_explorer_in_jupyterlab_after_the_smoke_plan_train_nothing(smoke, browser, tmp_path):
    """Issue 29, item 4: after the smoke plan, 03_obtain and 07_phase_transition opened in JupyterLab with
    only their study named, Run All: the charts (SVG) and the explorer's widgets render from local
    JavaScript (every request leaving localhost is blocked), 03 says it has nothing to train, no cell
    errs, and no chain file changes. Screenshots: outputs/screenshots/ (docs/figures/ keeps copies)."""
    from test_notebooks import _files

    assert smoke["code"] == 0, smoke["log"]
    study = tmp_path / "outputs" / "smoke"
    shutil.copytree(smoke["pristine"], study)
    files = _files(study)
    root = tmp_path / "lab"
    root.mkdir()
    for name in ("03_obtain.ipynb", "07_phase_transition.ipynb"):
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        params.source = params.source.replace('study_dir = "outputs/demo"', f"study_dir = {str(study)!r}")
        assert repr(str(study)) in params.source
        nbformat.write(nb, root / name)  # copies: JupyterLab may save outputs into them
    proc, log, port, token = _start_lab(root, tmp_path)
    try:
        blocked = []
        page = offline_page(browser, blocked)
        _run_all(page, port, token, "03_obtain.ipynb")
        page.wait_for_selector(".jp-RenderedSVG img", timeout=180_000)  # JupyterLab shows an SVG output as an <img>
        _wait_idle(page)
        text = page.inner_text(".jp-Notebook")
        (tmp_path / "03_obtain.txt").write_text(text)  # what the page showed, for a failure
        assert "nothing to train: every round of the 3 run(s) is finished and is read back" in text
        assert "TRAINS" not in text and "Traceback" not in text and not page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
        charts = page.eval_on_selector_all(".jp-RenderedSVG img", "imgs => imgs.map(i => decodeURIComponent(i.src))")
        assert any("movies, seed 0: test accuracy vs sparsity" in c and "TICKET-REINIT" in c for c in charts)
        page.evaluate("() => document.querySelector('.jp-RenderedSVG').scrollIntoView({block: 'end'})")
        page.wait_for_timeout(500)
        shoot(page, tmp_path, "jupyterlab_03_obtain")

        page2 = offline_page(browser, blocked)
        _run_all(page2, port, token, "07_phase_transition.ipynb")
        try:
            page2.wait_for_selector(".ltnb-accuracy svg", timeout=180_000)
            _wait_idle(page2)
        except Exception:
            shoot(page2, tmp_path, "jupyterlab_07_failed")  # what the page showed
            (tmp_path / "07.txt").write_text(page2.inner_text("body"))
            raise
        assert page2.locator(".widget-dropdown select").count() >= 2  # the ipywidgets controls, drawn by Lab's JS
        text2 = page2.inner_text(".jp-Notebook")
        assert "the paper's findings, tested" in text2 and "Traceback" not in text2
        assert not page2.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
        page2.evaluate("() => document.querySelector('.ltnb-accuracy').scrollIntoView({block: 'center'})")
        page2.wait_for_timeout(500)
        shoot(page2, tmp_path, "jupyterlab_07_phase_transition")
        assert _files(study) == files  # no cell trained or rewrote a chain
        assert not [u for u in blocked if any(k in u for k in ("vega", "altair", "unpkg", "jsdelivr", "cdn"))], blocked
    finally:
        stop(proc)
        log.close()
