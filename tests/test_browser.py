"""The Prefect UI as a user meets it (Playwright + Debian's chromium): open the pipeline deployment's Run
form, type a tiny override into it, submit, wait until the flow run page says Completed, open the run's
`mlflow-run` artifact and follow its link into a real MLflow UI, which must show that run (named after
the flow run, i.e. the DVC experiment)."""
from __future__ import annotations

import json
import re
import shutil
import urllib.request

import pytest

from tests.conftest import TINY_PARAMS, make_pipeline_repo

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _api_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


@pytest.mark.slow
def test_run_form_to_completed_to_the_mlflow_run(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from tests.servers import mlflow_ui, prefect_server, served_flows

    repo = make_pipeline_repo(tmp_path / "repo", TINY_PARAMS)
    with prefect_server(tmp_path, ui=True) as api, mlflow_ui(repo / "mlflow.db", tmp_path) as mlflow_url, \
            served_flows(repo, api, tmp_path, QELM_MLFLOW_UI_URL=mlflow_url), playwright.sync_playwright() as p:
        ui = api.removesuffix("/api")
        deployment = _api_json(f"{api}/deployments/name/qelm-pipeline/default")
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui}/deployments/deployment/{deployment['id']}", wait_until="networkidle")
            page.get_by_role("button", name="Run", exact=True).first.click()
            page.get_by_text("Custom run").first.click()
            page.wait_for_url(re.compile(r".*/run\b.*"))
            for label, value in (("Layers (Optional)", "1"), ("Steps (Optional)", "12")):  # Optional[int]: pick int, type
                field = page.get_by_text(label, exact=True).locator("xpath=ancestor::*[.//button[normalize-space()='int']][1]")
                field.get_by_role("button", name="int", exact=True).click()
                field.locator("input").first.fill(value)
            page.get_by_role("button", name="Submit").click()
            page.wait_for_url(re.compile(rf".*/deployments/deployment/{deployment['id']}(\?.*)?$"))

            runs = _api_json(f"{api}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
            assert len(runs) == 1, runs
            flow_run = runs[0]
            assert {k: v for k, v in flow_run["parameters"]["overrides"].items() if v not in (None, {})} == {
                "layers": 1, "steps": 12}  # what was typed into the form, nothing else
            page.goto(f"{ui}/runs/flow-run/{flow_run['id']}", wait_until="load")
            playwright.expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=900_000)
            page.get_by_text("Artifacts", exact=True).first.click()
            page.get_by_role("link", name=re.compile("mlflow-run")).first.click()
            link = page.locator(f"a[href^='{mlflow_url}/']").first
            playwright.expect(link).to_be_visible(timeout=30_000)
            run_id = link.inner_text().strip()
            assert link.get_attribute("href").endswith(f"/runs/{run_id}")
            page.goto(link.get_attribute("href"), wait_until="load")
            name = f"{flow_run['name']}-{flow_run['id'][:4]}"  # the DVC experiment and the MLflow run's name
            playwright.expect(page.get_by_text(name).first).to_be_visible(timeout=60_000)
            assert run_id in page.title()
        finally:
            browser.close()
