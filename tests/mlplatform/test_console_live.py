"""The console against real running services: a Stack with the fraud service (its worker),
the console and a private Redis, all under the production server; traffic over HTTP.

The browser tests drive Debian's chromium through Selenium and chromedriver (headless)
and skip, saying why, where either is missing. They measure the page's first paint and
save a screenshot to /tmp/console/console.png.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from mlplatform.config import Settings
from mlplatform.stack import Stack

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path("/tmp/console/console.png")
COLUMNS = ["transaction_id", "card_id", "merchant_id", "amount", "currency", "country",
           "channel", "device_id"]


@pytest.fixture(scope="module")
def stack(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("console") / "data"
    shutil.copytree(sim_data_dir, data_dir)
    # No recommender in this stack: its URL points at a closed port, so it shows as down.
    # API keys on, as in production: the stack makes a key, the console calls the fraud
    # service's /v1/model with it, the tests' own calls send it too (``_auth``).
    settings = Settings.from_env({}).with_(data_dir=data_dir, redis_url=None,
                                           recommender_url="http://127.0.0.1:9", auth=True)
    with Stack(settings, ["fraud", "console"], server="granian", workers=1,
               name="console-test", say=lambda _: None) as running:
        _auth.update(running.auth_headers)
        assert _auth, "the stack made no key for its clients"
        yield running


@pytest.fixture(scope="module")
def bodies(sim_data_dir: Path) -> list[dict[str, Any]]:
    """The last simulated transactions as request bodies, under fresh ids."""
    frame = pd.read_parquet(sim_data_dir / "payments" / "transactions.parquet")
    frame = frame.sort_values("timestamp").tail(1200)
    rows = frame[COLUMNS].to_dict("records")
    for row, ts in zip(rows, frame["timestamp"].tolist()):
        row["transaction_id"] = f"live-{row['transaction_id']}"
        row["timestamp"] = ts.isoformat()
        if row["device_id"] is None:
            del row["device_id"]
    return rows  # type: ignore[no-any-return]


_auth: dict[str, str] = {}  # the stack's key, set by the ``stack`` fixture


def _score(url: str, bodies: list[dict[str, Any]], batch: int = 50) -> None:
    with httpx.Client(timeout=30, headers=_auth) as client:
        for start in range(0, len(bodies), batch):
            reply = client.post(f"{url}/v1/transactions/score/batch",
                                json={"transactions": bodies[start:start + batch]})
            assert reply.status_code == 200, reply.text[:500]


def _get(url: str) -> dict[str, Any]:
    reply = httpx.get(url, timeout=30)
    assert reply.status_code == 200, reply.text[:500]
    return reply.json()  # type: ignore[no-any-return]


def test_api_shows_rates_decisions_and_a_down_service(
        stack: Stack, bodies: list[dict[str, Any]], wait_for: Callable[..., Any]) -> None:
    console, fraud = stack.urls["console"], stack.urls["fraud"]
    _score(fraud, bodies[:400])

    def traffic_seen() -> dict[str, Any] | None:
        o = _get(f"{console}/api/overview")
        summary = o["services"]["fraud"]["summary"]
        seen = sum(o["fraud"].get("decisions_total", {}).values()) if o["fraud"].get("up") else 0
        return o if summary and seen >= 400 and any(o["services"]["fraud"]["series"]["rps"]) else None

    o = wait_for("the console to see the fraud traffic", traffic_seen, timeout=60)
    fraud_svc = o["services"]["fraud"]
    assert fraud_svc["up"] is True
    assert max(r for r in fraud_svc["series"]["rps"] if r is not None) > 0
    assert any(p is not None and p > 0 for p in fraud_svc["series"]["p99"])
    assert sum(o["fraud"]["decisions_total"].values()) == 400
    assert set(o["fraud"]["decisions_total"]) <= {"approve", "review", "decline"}
    assert sum(o["fraud"]["scores"]["counts"]) >= 400
    # The recommender is not running: down, with the reason, never a 500.
    rec = o["services"]["recommender"]
    assert rec["up"] is False and "Connect" in (rec["error"] or "")
    assert o["models"]["served"]["fraud"]["up"] is True
    assert o["models"]["served"]["fraud"]["model_version"].startswith("fraud")
    assert "fraud-online" in o["models"]["registered"] or o["models"]["registered"]
    firing = {(a["name"], a["labels"].get("service")) for a in o["alerts"]["firing"]}
    assert ("ServiceDown", "recommender") in firing
    assert ("HighErrorRate", "fraud") not in firing
    # The separate endpoints answer with the same parts.
    assert _get(f"{console}/api/fraud")["up"] is True
    assert "items" in _get(f"{console}/api/experiments")
    assert _get(f"{console}/api/rollouts")["rollouts"]["available"] is True
    bad = httpx.get(f"{console}/api/drift/payments", timeout=10)
    assert bad.status_code == 404 and bad.json()["error"]["field"] == "service"


def test_drift_on_traffic_like_training_flags_nothing(
        stack: Stack, bodies: list[dict[str, Any]], wait_for: Callable[..., Any]) -> None:
    console = stack.urls["console"]
    # 600 ordinary transactions, whatever ran before: those an earlier test scored come
    # back as duplicates (no second record), so the window holds at least 600 either way.
    _score(stack.urls["fraud"], bodies[:600])

    def report() -> dict[str, Any] | None:
        d = _get(f"{console}/api/drift/fraud")
        return d if d.get("available") and d.get("rows", 0) >= 500 else None

    d = wait_for("a drift report over the ordinary traffic", report, timeout=90)
    assert d["enough_data"] is True
    assert "amount" in d["features"]
    assert d["features"]["amount"]["drifted"] is False, d["features"]["amount"]
    # An hour's window does not judge the time of day (it holds part of the day).
    hour = d["features"]["hour_of_day"]
    assert hour["drifted"] is False and "not_judged" in hour, hour


# -- the page in a real browser ------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"page tests need Debian's chromium ({CHROMIUM}) and chromedriver "
                    f"({CHROMEDRIVER}): apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _js_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_loads_plots_fill_and_injected_drift_shows(
        stack: Stack, bodies: list[dict[str, Any]], browser: Any,
        wait_for: Callable[..., Any]) -> None:
    from selenium.webdriver.common.by import By

    console, fraud = stack.urls["console"], stack.urls["fraud"]
    browser.get(console + "/")
    wait_for("the page's first update", lambda: browser.execute_script(
        "return window.mlsuiteConsole && window.mlsuiteConsole.updates"), timeout=30)
    assert _js_errors(browser) == []
    paint = browser.execute_script(
        "return performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
    paints = dict(paint)
    assert "first-contentful-paint" in paints, paint
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    (SCREENSHOT.parent / "paint.json").write_text(json.dumps(paints))

    # Traffic: after a few scrapes the fraud plots hold points with values.
    _score(fraud, bodies[600:800])

    def plotted() -> dict[str, int] | None:
        filled = browser.execute_script("return window.mlsuiteConsole.filled()")
        keys = ("fraud:rps", "fraud:latency", "fraud:decisions", "fraud:scores")
        return filled if all(filled.get(k, 0) >= 2 for k in keys) else None

    filled = wait_for("the fraud plots to hold data", plotted, timeout=60)
    lengths = browser.execute_script("return window.mlsuiteConsole.lengths()")
    assert lengths["fraud:rps"] >= 2 and filled["fraud:rps"] >= 2, (lengths, filled)

    # Injected drift: amounts x10. The drift table flags the amount, and an alert fires.
    shifted = [{**b, "transaction_id": b["transaction_id"] + "-x10",
                "amount": round(float(b["amount"]) * 10, 2)} for b in bodies[:1000]]
    _score(fraud, shifted)

    def drift_flagged() -> bool:
        # Read in one script: the page redraws its tables every few seconds.
        names = browser.execute_script(
            "return [...document.querySelectorAll('#drift-tables tr.drifted th')]"
            ".map(th => th.textContent)")
        return any(n.startswith("amount") for n in names)

    wait_for("the drift table to flag amount", drift_flagged, timeout=120)
    # The hour features are shown, not judged on the page's 1-hour window, and say why.
    hours = browser.execute_script(
        "return [...document.querySelectorAll('#drift-tables tr')]"
        ".filter(tr => tr.querySelector('th') && tr.querySelector('th').textContent"
        ".startsWith('hour_of_day')).map(tr => tr.lastElementChild.innerHTML)")
    assert hours and "not judged" in hours[0] and "time of day" in hours[0], hours

    def alert_shown() -> bool:
        text = browser.execute_script("return document.getElementById('alert-list').textContent")
        return "FeatureDrift" in text and "amount" in text

    wait_for("a FeatureDrift alert on the page", alert_shown, timeout=30)
    live = browser.find_element(By.ID, "alert-list").get_attribute("aria-live")
    assert live == "polite"
    browser.set_window_size(1440, 2600)  # the whole page in one picture
    # One more refresh of the page after the resize, so the picture shows it settled.
    stamp = browser.find_element(By.ID, "updated").text
    wait_for("the page to refresh after the resize",
             lambda: browser.find_element(By.ID, "updated").text != stamp, timeout=30)
    browser.save_screenshot(str(SCREENSHOT))
    browser.set_window_size(1440, 1000)
    assert _js_errors(browser) == []
    alerts = _get(f"{console}/api/alerts")["firing"]
    assert any(a["name"] == "FeatureDrift" and a["labels"]["feature"] == "amount" for a in alerts)


def test_page_is_keyboard_usable(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(stack.urls["console"] + "/")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    button = browser.find_element(By.ID, "pause")
    button.send_keys(Keys.ENTER)
    assert button.get_attribute("aria-pressed") == "true"
    assert button.text == "Resume updates"
    button.send_keys(Keys.SPACE)
    assert button.get_attribute("aria-pressed") == "false"
    headers = browser.find_elements(By.CSS_SELECTOR, "#services table thead th")
    assert [h.get_attribute("scope") for h in headers][:6] == ["col"] * 6
