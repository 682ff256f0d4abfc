"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Real hub, real services (``Coordinator`` + ``workflow()`` calling ``safe_point``), real browser.
Without the browser the tests skip with one clear line, except under ``CI=true`` where a missing
browser fails the run (``make test`` installs it where it can: scripts/ensure-system-deps).
The list and detail tests also write the screenshots shown in docs/hub.md.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chromium import CHROMIUM
from tests.support.chromium import CHROMIUM_ARGS as ARGS
from tests.support.dashboard_fleet import FleetService, Plan
from tests.support.faults import free_port
from tests.support.metrics import families, scrape
from tests.support.programs import missing_part
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.hub.testing import RawService, frame

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_MS = 15_000
TOKEN = "dash-steer-token"
READ = "dash-read-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = ""
    if sync_playwright is None:
        missing = "the playwright package (pip install -e '.[dev]')"
    elif not os.path.exists(CHROMIUM):
        missing = f"a Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        missing_part(f"browser tests need {missing}")
    expect.set_options(timeout=WAIT_MS)  # a loaded machine: waits end on events, not on time
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"the page raised: {errors}"


def _progress(page: Page, workflow_id: str) -> float:
    row = page.locator(f'tr[data-id="{workflow_id}"] [role=progressbar]')
    return float(row.get_attribute("aria-valuenow") or 0)


def test_the_list_shows_a_running_workflow_and_its_progress_moving(page: Page) -> None:
    with (
        ThreadedHub(Hub(port=0)) as hub,
        FleetService(
            hub.url,
            "billing",
            instance_id="billing-7f9c",
            version="2.3.1",
            capabilities=("invoices", "refunds"),
        ) as billing,
        FleetService(hub.url, "etl", instance_id="etl-0", version="1.4.0") as etl,
        FleetService(hub.url, "reports", instance_id="reports-1", version="0.9.2") as reports,
    ):
        etl.run(Plan("reindex-search", "wf-reindex", increment=10, step=0.02, until=40, fail="x"))
        etl.run(Plan("nightly-etl", "wf-nightly", increment=20, step=0.02, stage="load"))
        hub.wait_for(
            lambda h: all(
                w in h.workflows and h.workflows[w].phase.is_terminal
                for w in ("wf-reindex", "wf-nightly")
            ),
            10,
        )
        reports.run(Plan("monthly-report", "wf-report", increment=4, until=64, hold=True))
        hub.wait_for(
            lambda h: "wf-report" in h.workflows and h.workflows["wf-report"].progress > 20
        )
        hub.pause("wf-report", "month-end freeze")
        hub.wait_for(lambda h: h.workflows["wf-report"].phase.value == "paused")
        billing.run(Plan("export-ledger", "wf-ledger", increment=1, until=35, hold=True))
        billing.run(
            Plan(
                "invoice-run",
                "wf-invoice",
                increment=1,
                step=0.1,
                hold=True,
                stage="rendering PDFs",
                checkpoint_every=5,
                children=2,
            )
        )
        page.goto(hub.http_url + "/")
        row = page.locator('tr[data-id="wf-invoice"]')
        expect(row).to_contain_text("invoice-run")
        expect(row).to_contain_text("billing")
        expect(page.locator("#conn")).to_have_text("live")
        first = _progress(page, "wf-invoice")
        page.wait_for_function(
            """([id, first]) => Number(document.querySelector(
                `tr[data-id="${id}"] [role=progressbar]`).getAttribute("aria-valuenow")) > first""",
            arg=["wf-invoice", first],
        )
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        # active first: the running workflows lead the list
        phases = page.locator("#workflows tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.phase)"
        )
        assert phases[:2] == ["execution", "execution"]
        expect(page.locator("#counts")).to_contain_text("failed 1")
        hub.wait_for(lambda h: h.workflows["wf-invoice"].progress >= 30, 10)
        IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMG / "dashboard-list.png"))

        page.locator("#f-q").fill("ledger")
        expect(page.locator("#workflows tbody tr")).to_have_count(1)
        expect(page.locator("#page-info")).to_have_text("1\u20131 of 1")

        page.goto(hub.http_url + "/#/w/wf-invoice")
        expect(page.locator("#children")).to_contain_text("invoice-run-part-2")
        expect(page.locator("#checkpoints")).to_contain_text("cp-30")
        expect(page.locator("#logs")).to_contain_text("invoice-run started")
        expect(page.locator("#detail-facts")).to_contain_text("Trace")
        page.screenshot(path=str(IMG / "dashboard-detail.png"), full_page=True)

        page.goto(hub.http_url + "/#/services")
        services = page.locator("#services tbody")
        expect(services).to_contain_text("billing-7f9c")
        expect(services).to_contain_text("invoices, refunds")
        expect(services).to_contain_text("2 active / 4")
        hub.cancel("wf-report")
        assert not billing.failures
        assert not etl.failures
        assert not reports.failures


def test_pause_from_the_detail_page_reaches_the_service(page: Page) -> None:
    with (
        ThreadedHub(Hub(port=0)) as hub,
        FleetService(hub.url, "billing") as billing,
    ):
        billing.run(Plan("invoice-run", "wf-1", increment=1, until=50, hold=True))
        hub.wait_for(lambda h: "wf-1" in h.workflows and h.workflows["wf-1"].progress > 0, 10)
        page.goto(hub.http_url + "/#/w/wf-1")
        expect(page.locator("#detail-phase")).to_have_text("execution")
        expect(page.locator("#do-resume")).to_be_hidden()  # the phase does not allow it
        page.locator("#reason").fill("maintenance window")
        page.locator("#do-pause").click()
        expect(page.locator("#detail-phase")).to_have_text("paused")
        expect(page.locator("#detail-pending")).to_have_text("")
        history = hub.workflows["wf-1"].history
        assert [c.to_phase.value for c in history[-2:]] == ["pausing", "paused"]
        assert history[-2].reason == "maintenance window"
        expect(page.locator("#do-pause")).to_be_hidden()
        expect(page.locator("#do-resume")).to_be_visible()

        page.locator("#do-cancel").click()
        expect(page.locator("#detail-phase")).to_have_text("cancelled")
        for op in ("pause", "resume", "cancel"):
            expect(page.locator(f"#do-{op}")).to_be_hidden()
        expect(page.locator("#steer-note")).to_contain_text("Nothing to steer")
        assert not billing.failures


def test_with_a_token_nothing_shows_before_login_and_logout_ends_the_session(
    page: Page,
) -> None:
    with (
        ThreadedHub(Hub(port=0, token=TOKEN)) as hub,
        FleetService(hub.url, "billing", token=TOKEN) as billing,
    ):
        billing.run(Plan("secret-payroll", "wf-1", increment=1, until=20, hold=True))
        hub.wait_for(lambda h: "wf-1" in h.workflows, 10)
        page.goto(hub.http_url + "/")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#nav")).to_be_hidden()
        assert "secret-payroll" not in page.content()
        page.locator("#token").fill("wrong")
        page.locator("#token").press("Enter")
        expect(page.locator("#login-error")).to_contain_text("wrong token")
        assert "secret-payroll" not in page.content()

        page.locator("#token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator('tr[data-id="wf-1"]')).to_contain_text("secret-payroll")
        assert TOKEN not in page.url
        cookies = page.context.cookies()
        session = next(c for c in cookies if c["name"] == "when_session")
        assert session["httpOnly"]
        assert session["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""

        page.get_by_role("button", name="Log out").click()
        expect(page.locator("#login")).to_be_visible()
        assert "secret-payroll" not in page.locator("body").inner_text()
        status = _get(hub.port, "/v1/workflows", f"when_session={session['value']}")
        assert status == 401
        billing.stop.set()


def _get(port: int, path: str, cookie: str) -> int:
    import http.client  # noqa: PLC0415

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Cookie": cookie})
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_read_only_token_sees_but_cannot_steer(page: Page) -> None:
    with (
        ThreadedHub(Hub(port=0, token=TOKEN, read_token=READ)) as hub,
        FleetService(hub.url, "billing", token=TOKEN) as billing,
    ):
        billing.run(Plan("invoice-run", "wf-1", increment=1, until=30, hold=True))
        hub.wait_for(lambda h: "wf-1" in h.workflows, 10)
        page.goto(hub.http_url + "/")
        page.locator("#token").fill(READ)
        page.locator("#token").press("Enter")
        expect(page.locator('tr[data-id="wf-1"]')).to_contain_text("invoice-run")
        expect(page.locator("#who")).to_have_text("read only")
        page.locator("#f-phase").select_option("execution")
        expect(page.locator("#workflows tbody tr")).to_have_count(1)
        expect(page.locator("#bulk-cancel")).to_be_hidden()
        page.locator('tr[data-id="wf-1"] a').click()
        expect(page.locator("#detail-phase")).to_have_text("execution")
        expect(page.locator("#steer-note")).to_contain_text("may watch but not steer")
        for op in ("pause", "resume", "cancel"):
            expect(page.locator(f"#do-{op}")).to_be_hidden()
        # not just hidden: the session itself cannot steer, whatever the page sends
        reply: dict[str, Any] = page.evaluate(
            """() => new Promise((resolve) => {
                const ws = new WebSocket(`ws://${location.host}/v1/operator`);
                const pause = {id: 1, op: "pause", workflow_id: "wf-1"};
                ws.onopen = () => ws.send(JSON.stringify(pause));
                ws.onmessage = (m) => { resolve(JSON.parse(m.data)); ws.close(); };
            })"""
        )
        assert (reply["ok"], reply["code"]) == (False, "forbidden")
        assert hub.workflows["wf-1"].phase.value == "execution"
        assert not [s for s in hub.sent if s.message.type == "pause"]
        billing.stop.set()


def test_the_page_recovers_after_a_hub_restart(page: Page, tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "hub.db"
    first = ThreadedHub(Hub(port=port, db=db))
    first.start()
    try:
        with FleetService(first.url, "billing") as billing:
            billing.run(Plan("invoice-run", "wf-1", increment=0.5, step=0.05, hold=True))
            page.goto(first.http_url + "/")
            expect(page.locator('tr[data-id="wf-1"]')).to_contain_text("invoice-run")
            expect(page.locator("#conn")).to_have_text("live")
            first.close()
            expect(page.locator("#conn")).to_contain_text("offline")
            with ThreadedHub(Hub(port=port, db=db)) as second:
                expect(page.locator("#conn")).to_have_text("live")
                second.wait_for(lambda h: h.services and next(iter(h.services.values())).connected)
                before = second.workflows["wf-1"].progress
                second.wait_for(lambda h: h.workflows["wf-1"].progress > before + 2, 10)
                page.wait_for_function(
                    """(before) => Number(document.querySelector(
                        'tr[data-id="wf-1"] [role=progressbar]').getAttribute("aria-valuenow"))
                        > before + 2""",
                    arg=before,
                )
                billing.stop.set()
            assert not billing.failures
    finally:
        first.close()


def test_the_page_fits_a_phone(page: Page) -> None:
    with (
        ThreadedHub(Hub(port=0)) as hub,
        FleetService(hub.url, "billing") as billing,
    ):
        billing.run(Plan("invoice-run", "wf-1", increment=0.5, until=60, hold=True))
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(hub.http_url + "/")
        expect(page.locator('tr[data-id="wf-1"]')).to_contain_text("invoice-run")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
        # keyboard only: the workflow's link keeps the focus while the row updates live
        page.locator('tr[data-id="wf-1"] a').focus()
        first = _progress(page, "wf-1")
        page.wait_for_function(
            """(first) => Number(document.querySelector(
                'tr[data-id="wf-1"] [role=progressbar]').getAttribute("aria-valuenow"))
                > first + 3""",
            arg=first,
        )
        focused = page.evaluate("document.activeElement.closest('tr')?.dataset.id")
        assert focused == "wf-1"
        page.keyboard.press("Enter")
        expect(page.locator("#detail-title")).to_have_text("invoice-run")
        labels = page.evaluate(
            """() => [...document.querySelectorAll('input, select')]
                .filter((e) => !e.closest('[hidden]'))
                .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                .map((e) => e.id)"""
        )
        assert labels == [], f"controls without a label: {json.dumps(labels)}"
        billing.stop.set()


def test_bulk_cancel_of_the_filtered_set_after_a_confirmation(page: Page) -> None:
    with (
        ThreadedHub(Hub(port=0)) as hub,
        FleetService(hub.url, "etl") as etl,
    ):
        for n in (1, 2):
            etl.run(Plan("batch-import", f"wf-{n}", increment=1, until=20, hold=True))
        etl.run(Plan("keep-me", "wf-3", increment=1, until=20, hold=True))
        hub.wait_for(lambda h: len(h.workflows) == 3, 10)
        page.goto(hub.http_url + "/")
        expect(page.locator("#workflows tbody tr")).to_have_count(3)
        expect(page.locator("#bulk-cancel")).to_be_hidden()  # never "cancel everything"
        page.locator("#f-q").fill("batch")
        expect(page.locator("#workflows tbody tr")).to_have_count(2)
        page.locator("#bulk-cancel").click()
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm-text")).to_contain_text("2 match in all")
        page.locator("#confirm-no").click()  # changing one's mind cancels nothing
        expect(page.locator("#confirm")).to_be_hidden()
        assert not [s for s in hub.sent if s.message.type == "cancel"]

        page.locator("#bulk-cancel").click()
        page.locator("#confirm-reason").fill("bad input file")
        page.locator("#confirm-yes").click()
        rows = page.locator("#workflows tbody tr")
        expect(rows.filter(has_text="cancelled")).to_have_count(2)
        assert hub.workflows["wf-3"].phase.value == "execution"
        reasons = {c.reason for w in ("wf-1", "wf-2") for c in hub.workflows[w].history}
        assert "bad input file" in reasons
        assert not etl.failures


def test_cancelling_shows_pending_until_the_service_confirms(page: Page) -> None:
    """A service that takes its time: the page says "cancelling…" until the phase changes."""
    with ThreadedHub(Hub(port=0, trace_url="http://traces.example/trace/{trace_id}")) as hub:

        async def start() -> RawService:
            service = await RawService.connect(hub.url, service_name="slow")
            await service.register("slow")
            created = {"workflow_id": "wf-1", "action_type": "slow-job"}
            await service.send(frame("workflow_created", "wf-1", created))
            change = {"workflow_id": "wf-1", "from": "planning", "to": "execution"}
            await service.send(frame("phase_changed", "wf-1", change))
            entry = {"level": "info", "message": "working", "workflow_id": "wf-1"}
            await service.send(frame("log", payload={**entry, "trace_id": "ab" * 16}))
            return service

        service = hub.run(start())
        hub.wait_for(lambda h: len(h.logs) == 1)
        page.goto(hub.http_url + "/#/w/wf-1")
        expect(page.locator("#detail-phase")).to_have_text("execution")
        link = page.get_by_role("link", name="ab" * 16)
        expect(link).to_have_attribute("href", "http://traces.example/trace/" + "ab" * 16)
        page.locator("#reason").fill("stuck")
        page.locator("#do-cancel").click()
        expect(page.locator("#detail-pending")).to_have_text("cancelling…")
        expect(page.locator("#do-cancel")).to_be_disabled()
        cancel = hub.run(service.expect("cancel"))
        assert cancel["payload"]["reason"] == "stuck"
        page.locator("#back").click()  # the list says so too
        expect(page.locator('tr[data-id="wf-1"]')).to_contain_text("cancelling…")
        page.locator('tr[data-id="wf-1"] a').click()
        expect(page.locator("#detail-pending")).to_have_text("cancelling…")

        change = {"workflow_id": "wf-1", "from": "execution", "to": "cancelling"}
        hub.run(service.send(frame("phase_changed", "wf-1", change)))
        expect(page.locator("#detail-phase")).to_have_text("cancelling")
        expect(page.locator("#detail-pending")).to_have_text("")
        hub.run(service.close())


def _completed(hub: Any) -> int:
    return sum(w.phase.value == "completed" for w in hub.workflows.values())


COUNT_METRICS_ASKS = """
const send = WebSocket.prototype.send;
window.metricsAsked = [];
WebSocket.prototype.send = function (data) {
  if (JSON.parse(data).op === "metrics") window.metricsAsked.push(performance.now() / 1000);
  return send.call(this, data);
};
"""
"""Records in the page when it asks the hub for its figures (the page's clock, not the test's)."""


def _asked(page: Page) -> list[float]:
    return list(page.evaluate("window.metricsAsked"))


def _figure(value: float) -> str:
    """A /metrics sample as the Hub view writes it (counts are whole numbers)."""
    assert float(value).is_integer()
    return str(int(value))


def test_the_hub_view_shows_the_figures_of_metrics_live(page: Page) -> None:
    page.add_init_script(COUNT_METRICS_ASKS)
    with ThreadedHub(Hub(port=0)) as hub, FleetService(hub.url, "etl") as etl:
        for n in (1, 2):
            etl.run(Plan("import", f"wf-{n}", increment=50, step=0.01))
        hub.wait_for(lambda h: _completed(h) == 2, 10)
        etl.run(Plan("export", "wf-held", increment=5, until=30, hold=True))
        hub.wait_for(lambda h: "wf-held" in h.workflows and h.workflows["wf-held"].progress > 0)
        assert hub.status("wf-held").phase.value == "execution"
        page.goto(hub.http_url + "/#/hub")
        expect(page.locator("#nav-hub")).to_have_attribute("aria-current", "page")
        scraped = families(scrape(hub, None)[1])
        completed = page.locator('[data-metric="workflows.completed"]')
        expect(completed).to_have_text(
            _figure(scraped["when_hub_workflows"][(("phase", "completed"),)])
        )
        assert completed.text_content() == "2"
        expect(page.locator('[data-metric="services.connected"]')).to_have_text(
            _figure(scraped["when_hub_services"][(("state", "connected"),)])
        )
        created = scraped["when_hub_messages_applied_total"][(("type", "workflow_created"),)]
        expect(page.locator('[data-metric="messages_applied.workflow_created"]')).to_have_text(
            _figure(created)
        )
        status = scraped["when_hub_command_duration_seconds_count"][
            (("command", "status"), ("outcome", "ok"))
        ]
        expect(page.locator('[data-metric="commands.status.ok.count"]')).to_have_text(
            _figure(status)
        )
        page.screenshot(path=str(IMG / "dashboard-hub.png"), full_page=True)
        # every figure is in a table whose columns and rows have headers
        headers = page.locator("#view-hub table").evaluate_all(
            """tables => tables.filter((t) => !t.closest('[hidden]')).map((t) => [
                t.querySelectorAll('thead th[scope=col]').length,
                [...t.tBodies[0].rows].every((r) => r.querySelector('th[scope=row]'))])"""
        )
        assert headers
        assert all(cols >= 2 and rows for cols, rows in headers), headers

        # live: a workflow completes and the view follows, as /metrics does
        etl.run(Plan("import", "wf-3", increment=50, step=0.01))
        hub.wait_for(lambda h: _completed(h) == 3, 10)
        expect(completed).to_have_text("3")
        assert families(scrape(hub, None)[1])["when_hub_workflows"][(("phase", "completed"),)] == 3
        page.wait_for_function("(n) => window.metricsAsked.length > n", arg=len(_asked(page)) + 1)
        gaps = [b - a for a, b in itertools.pairwise(_asked(page))]
        assert len(gaps) >= 2
        assert min(gaps) > 0.8, f"asked more than once a second: {gaps}"

        # hidden, the view asks for nothing
        page.locator("#nav-workflows").click()
        expect(page.locator("#view-list")).to_be_visible()
        before = len(_asked(page))
        etl.run(Plan("slow-import", "wf-4", increment=10, step=0.15))
        expect(page.locator('tr[data-id="wf-4"]')).to_contain_text("completed")
        assert len(_asked(page)) == before, "the hidden Hub view kept asking"
        after = len(_asked(page))
        page.locator("#nav-hub").click()  # and shown again, it asks again
        expect(completed).to_have_text("4")
        page.wait_for_function("(n) => window.metricsAsked.length > n", arg=after)
        page.set_viewport_size({"width": 390, "height": 844})
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the Hub view scrolls sideways on a phone ({width} px)"
        assert not etl.failures


def test_with_a_token_the_hub_view_shows_nothing_before_sign_in(page: Page) -> None:
    with (
        ThreadedHub(Hub(port=0, token=TOKEN)) as hub,
        FleetService(hub.url, "billing", token=TOKEN) as billing,
    ):
        billing.run(Plan("payroll", "wf-1", increment=50, step=0.01))
        hub.wait_for(lambda h: _completed(h) == 1, 10)
        page.goto(hub.http_url + "/#/hub")
        expect(page.locator("#login")).to_be_visible()
        figures = page.locator("#view-hub [data-metric]")
        expect(page.locator("#view-hub")).to_be_hidden()
        expect(figures).to_have_count(0)
        page.locator("#token").fill(TOKEN)
        page.locator("#token").press("Enter")
        scraped = families(scrape(hub, TOKEN)[1])
        expect(page.locator('[data-metric="workflows.completed"]')).to_have_text(
            _figure(scraped["when_hub_workflows"][(("phase", "completed"),)])
        )
        page.get_by_role("button", name="Log out").click()
        expect(page.locator("#login")).to_be_visible()
        expect(figures).to_have_count(0)
        assert not billing.failures
