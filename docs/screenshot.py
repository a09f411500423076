"""Screenshot of the phase-transition explorer (Voila) on a study, for the README.

    .venv/bin/python docs/screenshot.py outputs/demo docs/figures/explorer.png [DOMAIN]

Starts `ltnb explore` on a free localhost port, opens it in headless Debian Chromium, picks DOMAIN
(default: the first) and saves a full-page screenshot.
"""
import socket
import sys
import time

from playwright.sync_api import sync_playwright

from ltnb.analysis import explore

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic"]


def main(study: str, out: str, domain: str | None = None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = explore.serve(study, port=port, wait=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            deadline = time.monotonic() + 120
            while True:  # the server is up once its port takes connections
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            # Voila sends the page as the notebook runs: a full study's statistics take a while
            page.goto(f"http://127.0.0.1:{port}/", timeout=300_000)
            page.wait_for_selector("svg", timeout=120_000)
            if domain:
                page.get_by_role("combobox").first.select_option(domain)
                page.wait_for_timeout(3000)
            page.wait_for_timeout(1500)
            page.screenshot(path=out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print("saved", out)


if __name__ == "__main__":
    main(*sys.argv[1:])
