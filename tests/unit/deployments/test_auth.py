"""API keys at the ingress (``deployments/auth.py``) and their settings (``ingress.api_keys``,
``api_keys_env``, ``require_api_key``): where keys come from, how a header is checked, the 401's
shape, and the startup and config errors that keep a server from running open by mistake."""

import hmac

import pytest

from deployments import auth
from deployments.auth import ApiKeyAuth, bearer_token, load_keys, parse_keys, refuse_serve_hints
from deployments.config import AppConfig
from deployments.protocol import APIError

K1 = "sk-test-" + "a" * 24
K2 = "sk-test-" + "b" * 24


def test_env_keys_split_on_commas_and_whitespace_and_dedupe_after_config_keys():
    env = {"MY_KEYS": f" {K2} ,\n{K1},, {K2}\t"}
    assert parse_keys(env["MY_KEYS"], "$MY_KEYS") == [K2, K1, K2]
    assert load_keys([K1], "MY_KEYS", env) == [K1, K2]
    assert load_keys([], "MY_KEYS", {}) == []  # unset variable: no keys
    assert load_keys([], None, env) == []  # no variable named: the environment is not read


@pytest.mark.parametrize("bad, why", [
    ("short-key", "at least 16"),
    ("has a space in the middle", "printable ASCII"),
    ("caf\u00e9-" + "x" * 20, "printable ASCII"),
])
def test_unusable_keys_are_refused_without_echoing_them(bad, why):
    with pytest.raises(ValueError, match=why) as err:
        load_keys([bad], None, {})
    assert bad not in str(err.value)


def test_a_bad_key_in_the_environment_names_the_variable():
    with pytest.raises(ValueError, match=r"\$MY_KEYS: .*at least 16"):
        load_keys([], "MY_KEYS", {"MY_KEYS": f"{K1},tooshort"})


@pytest.mark.parametrize("header, token", [
    (f"Bearer {K1}", K1),
    (f"bearer   {K1}  ", K1),  # scheme is case-insensitive (RFC 7235), spaces around the token tolerated
    (f"Basic {K1}", None),
    ("Bearer", None),
    ("Bearer ", None),
    (K1, None),  # a bare key is not a bearer token
    ("", None),
    (None, None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_any_configured_key_is_accepted_and_nothing_else():
    checker = ApiKeyAuth([K1, K2])
    assert checker.enabled and checker.num_keys == 2
    assert checker.allows(f"Bearer {K1}") and checker.allows(f"Bearer {K2}")
    for header in (None, "", f"Bearer {K1}x", f"Bearer {K1[:-1]}", f"Basic {K1}", K1, f"Bearer {K1.upper()}"):
        assert not checker.allows(header), header


def test_no_key_configured_lets_everything_through():
    checker = ApiKeyAuth([])
    assert not checker.enabled
    assert checker.allows(None) and checker.allows("Bearer anything")
    checker.check(None)  # no error


def test_every_key_is_compared_in_constant_time_on_equal_length_digests(monkeypatch):
    """The time of a check must not tell which key (or which prefix) nearly matched: each key is
    compared with hmac.compare_digest, all of them every time, on fixed-length digests (so not even
    the length of the presented token against a key's length decides when the comparison returns)."""
    calls = []
    compare = hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    checker = ApiKeyAuth([K1, K2, "sk-other-" + "c" * 40])
    for header in (f"Bearer {K1}", f"Bearer {K2}", "Bearer x", f"Bearer {K1 * 3}"):
        calls.clear()
        checker.allows(header)
        assert calls == [(32, 32)] * 3, header  # sha256 digests, one comparison per key, no early exit


def test_the_401_has_openais_shape_and_a_bearer_challenge():
    checker = ApiKeyAuth([K1])
    with pytest.raises(APIError) as missing:
        checker.check(None)
    with pytest.raises(APIError) as wrong:
        checker.check("Bearer sk-wrong-key-0123456789")
    for err in (missing.value, wrong.value):
        assert err.status == 401 and err.headers == {"WWW-Authenticate": "Bearer"}
        body = err.body()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", None, "invalid_api_key")
    assert "didn't provide an API key" in missing.value.message
    assert "Incorrect API key" in wrong.value.message and "sk-wrong" not in wrong.value.message


def test_required_but_no_key_anywhere_fails_at_startup_naming_the_variable():
    with pytest.raises(ValueError, match="SSJF_API_KEYS"):
        ApiKeyAuth.from_settings([], "SSJF_API_KEYS", require=True, environ={})
    assert ApiKeyAuth.from_settings([], "SSJF_API_KEYS", require=True, environ={"SSJF_API_KEYS": K1}).enabled
    assert ApiKeyAuth.from_settings([K1], None, require=True, environ={}).enabled
    # Not required: no key means an open server (the local demo), keys mean a closed one.
    assert not ApiKeyAuth.from_settings([], "SSJF_API_KEYS", require=False, environ={}).enabled
    assert ApiKeyAuth.from_settings([], "SSJF_API_KEYS", require=False, environ={"SSJF_API_KEYS": K2}).allows(
        f"Bearer {K2}")


def test_settings_defaults_and_validation():
    ing = AppConfig.from_dict({}).ingress
    assert (ing.api_keys, ing.api_keys_env, ing.require_api_key, ing.protect_metrics,
            ing.accept_serve_hint_headers) == ([], "SSJF_API_KEYS", False, False, False)
    assert AppConfig.from_dict({"ingress": {"api_keys": [K1], "require_api_key": True}}).ingress.api_keys == [K1]
    for bad, match in [
        ({"api_keys": K1}, "must be a list"),
        ({"api_keys": ["short"]}, r"ingress.api_keys\[0\].*at least 16"),
        ({"api_keys_env": "NOT-A-NAME"}, "environment variable name"),
        ({"require_api_key": True, "api_keys_env": None}, "nowhere to get a key"),
        ({"metrics_push_s": 0}, "metrics_push_s must be > 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            AppConfig.from_dict({"ingress": bad})


@pytest.mark.parametrize("name", auth.SERVE_HINT_HEADERS)
def test_serve_proxy_hint_headers_are_refused(name):
    refuse_serve_hints({"content-type": "application/json"})  # none: fine
    with pytest.raises(APIError) as err:
        refuse_serve_hints({name: "0"})
    assert err.value.status == 400 and err.value.code == "header_not_allowed" and err.value.param == name


def test_the_hint_header_names_are_serves_own():
    """If Serve renames its headers, the refusal must follow (ray/serve/_private/constants.py)."""
    from ray.serve._private.constants import (
        SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER,
        SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER,
    )

    assert set(auth.SERVE_HINT_HEADERS) == {SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER,
                                            SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER}


def _ingress_settings(path):
    import yaml

    data = yaml.safe_load(path.read_text())
    return [AppConfig.from_dict(app.get("args")).ingress for app in data["applications"]]


def test_the_cloud_configs_require_a_key_from_the_environment_and_ship_none():
    from pathlib import Path

    cluster = Path(__file__).resolve().parents[3] / "cluster"
    for name in ("serve_gpu_hf.yaml", "serve_gpu_deepspeed.yaml"):  # deployed by ray_cluster*.yaml on 0.0.0.0
        for ing in _ingress_settings(cluster / name):
            assert ing.require_api_key and ing.api_keys_env == "SSJF_API_KEYS" and ing.api_keys == [], name
            assert not ing.accept_serve_hint_headers, name
    for path in sorted(cluster.glob("*.yaml")):  # no file in the repo carries a literal key
        if "applications" in path.read_text():
            assert all(ing.api_keys == [] for ing in _ingress_settings(path)), path.name
    # The local demo stays open (loopback only): no key needed to try it.
    assert not any(ing.require_api_key for ing in _ingress_settings(cluster / "serve_local.yaml"))
