"""Access control and metrics of a live cluster (replay engine, two ingress replicas behind Serve's
HTTP proxy): API keys on both POST routes and /v1/models (no key, a wrong key, each right key),
/healthz and /metrics open and telling no internals, Serve's proxy hint headers refused, and
/metrics counters that add up over the ingress replicas however Serve spreads the scrapes."""

import concurrent.futures
import re

import httpx
import openai
import pytest

from tests.integration.conftest import make_replay_config

pytestmark = pytest.mark.integration

K1 = "sk-ssjf-test-" + "1" * 24
K2 = "sk-ssjf-test-" + "2" * 24
ROUTES = [("POST", "/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 4, "replay_output_tokens": 2}),
          ("POST", "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 4, "replay_output_tokens": 2}),
          ("GET", "/v1/models", None)]


@pytest.fixture(scope="module")
def app(deploy_module):
    # Two ingress replicas: Serve's proxy spreads requests (scrapes included) over both.
    return deploy_module(make_replay_config("authz", ingress={"num_cpus": 0, "num_replicas": 2, "api_keys": [K1, K2],
                                                               "metrics_push_s": 0.2}))


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app.url, timeout=60) as client:
        yield client


def call(http, method, path, body, key=None, headers=None):
    headers = dict(headers or {})
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return http.request(method, path, json=body, headers=headers)


def counter(text: str, endpoint: str, status: str) -> float:
    m = re.search(rf'^ssjf_requests_total{{endpoint="{endpoint}",status="{status}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


# First in the module, on the fresh app: its counts start at zero.
def test_metrics_add_up_over_both_ingress_replicas_and_never_go_back(app, http, wait):
    import ray

    from deployments.config import AppConfig

    n = 24
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: call(http, *ROUTES[0], key=K1).status_code, range(n)))
    assert statuses == [200] * n

    seen = []

    def scraped_all():
        resp = http.get("/metrics")
        assert resp.status_code == 200, resp.text
        seen.append(counter(resp.text, "completions", "200"))
        return seen[-1] == n

    wait(scraped_all, timeout=30, interval=0.1, what=f"/metrics to count all {n} requests")
    for _ in range(10):  # more scrapes, answered by either replica: the count stays
        scraped_all()
    assert seen == sorted(seen) and seen[-1] == n, seen  # monotonic, and exactly what was sent

    # Both replicas served some of them: one replica's own counts could not have shown n.
    cfg = AppConfig.from_dict(app.config)
    store = ray.get_actor(cfg.metrics_actor_name, namespace=cfg.router.namespace)
    per_replica = [s.value("ssjf_requests_total", endpoint="completions", status="200")
                   for s in ray.get(store.sources.remote(), timeout=30).values()]
    assert len(per_replica) == 2 and sum(per_replica) == n and min(per_replica) > 0, per_replica


@pytest.mark.parametrize("method, path, body", ROUTES, ids=[r[1] for r in ROUTES])
def test_no_key_and_a_wrong_key_get_openais_401_and_each_right_key_passes(http, method, path, body):
    for key, message in [(None, "didn't provide an API key"), ("sk-wrong-" + "0" * 24, "Incorrect API key")]:
        resp = call(http, method, path, body, key=key)
        assert resp.status_code == 401, resp.text
        assert resp.headers["www-authenticate"] == "Bearer"
        error = resp.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "invalid_api_key")
        assert message in error["message"]
    # A key in another scheme is no key.
    assert call(http, method, path, body, headers={"authorization": f"Basic {K1}"}).status_code == 401
    for key in (K1, K2):
        resp = call(http, method, path, body, key=key)
        assert resp.status_code == 200, resp.text


def test_the_official_client_sends_its_key(app):
    ok = openai.OpenAI(base_url=f"{app.url}/v1", api_key=K2, max_retries=0, timeout=60)
    assert [m.id for m in ok.models.list().data] == ["*"]
    assert ok.completions.create(model="m", prompt="hi", max_tokens=3).choices[0].finish_reason in ("length", "stop")
    wrong = openai.OpenAI(base_url=f"{app.url}/v1", api_key="sk-wrong-" + "0" * 24, max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "invalid_api_key"


def test_refusals_are_counted(http, wait):
    assert call(http, *ROUTES[2]).status_code == 401
    wait(lambda: counter(http.get("/metrics").text, "models", "401") >= 1, timeout=30, what="the 401 counted")


def test_healthz_and_metrics_stay_open(http):
    health = http.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and set(body) <= {"status", "num_replicas", "num_queued", "num_running"}
    assert body["num_replicas"] == 2
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "ssjf_router_replicas 2.0" in metrics.text


@pytest.mark.parametrize("header, value", [("x-request-timeout-seconds", "0"),
                                           ("x-request-disconnect-disabled", "?1")])
def test_serve_proxy_hint_headers_are_refused_before_any_work(app, http, header, value):
    before = app.snapshot()["num_queued"] + app.snapshot()["num_running"]
    resp = call(http, *ROUTES[0], key=K1, headers={header: value})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "header_not_allowed" and error["param"] == header
    assert app.snapshot()["num_queued"] + app.snapshot()["num_running"] <= before


def test_healthz_says_unavailable_without_internals(app, http):
    """The router actor gone: 503 and only a status (no actor names, no node addresses). Last in the
    module: the router is replaced by the next use."""
    import ray

    ray.kill(app.router(), no_restart=True)
    resp = http.get("/healthz")
    assert resp.status_code == 503 and resp.json() == {"status": "unavailable"}


def test_with_hint_headers_accepted_the_ingress_deadline_still_ends_the_request(deploy):
    """Where an operator lets the hints through (ingress.accept_serve_hint_headers), Serve's proxy
    drops its own timeout for a client sending x-request-timeout-seconds: 0; the ingress's
    request_timeout_s does not depend on the proxy and still ends the request."""
    app = deploy(make_replay_config("hints", ingress={"num_cpus": 0, "accept_serve_hint_headers": True,
                                                      "request_timeout_s": 1.0}))
    body = {"model": "m", "prompt": "hi", "max_tokens": 4000, "replay_output_tokens": 4000}
    resp = httpx.post(f"{app.url}/v1/completions", json=body, timeout=60,
                      headers={"x-request-timeout-seconds": "0", "x-request-disconnect-disabled": "?1"})
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "request_timeout"
