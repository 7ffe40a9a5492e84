"""Hypothesis strategies for request bodies: JSON-ish values of every kind (nested, strings with
lone surrogates, huge integers, NaN and infinities), and completion/chat bodies whose fields are
mostly plausible, so that a check deep in the parser gets reached too."""

from hypothesis import strategies as st

from deployments.protocol import CHAT_ROLES, MAX_MODEL_CHARS, MAX_STOP, MAX_STOP_CHARS


def weighted(usual, rare, odds: int = 7):
    """``usual`` ``odds`` times as often as ``rare`` (one_of alone picks its branches evenly)."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda pick: usual if pick else rare)


# Text, some of it with lone surrogates (hypothesis leaves category Cs out unless asked).
clean_texts = st.text(max_size=12)
# (st.text drops surrogates from any alphabet: join characters instead.)
texts = weighted(clean_texts, st.lists(st.characters() | st.characters(categories=["Cs"]), min_size=1,
                                       max_size=12).map("".join), odds=3)
ints = st.integers() | st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, -(2**63) - 1, 10**20, 10**400, -(10**400)])
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e20, 1e308, -0.0, 0.5, 2.0000001])
scalars = st.none() | st.booleans() | ints | floats | texts
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


def field(*specific):
    """A field's value: mostly a plausible one (so the other fields get checked too), sometimes
    anything at all."""
    return weighted(st.one_of(*specific), json_values)


def bodies(required: dict, optional: dict):
    """Bodies where each field is usually plausible; options we refuse and unknown fields are rarer."""
    junk = st.fixed_dictionaries({}, optional={k: json_values for k in (
        "logprobs", "top_logprobs", "echo", "suffix", "tools", "best_of", "user")})
    return st.tuples(st.fixed_dictionaries(required, optional=optional), st.just({}) | junk).map(
        lambda parts: {**parts[1], **parts[0]})


message = st.fixed_dictionaries({
    "role": field(st.sampled_from(CHAT_ROLES)),
    "content": field(texts, texts,
                     st.lists(st.fixed_dictionaries({"type": field(st.just("text")), "text": field(texts)}), max_size=3)),
}, optional={"name": json_values})
model = field(texts, texts, st.text(min_size=MAX_MODEL_CHARS, max_size=MAX_MODEL_CHARS + 2))
common = {
    "max_tokens": field(st.integers(1, 10**6), ints),
    "max_completion_tokens": field(st.integers(1, 10**6), ints),
    "temperature": field(floats, ints, st.just(10**400)),
    "top_p": field(floats, ints, st.just(-(10**400))),
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({}, optional={"include_usage": field(st.booleans())})),
    "stop": field(texts, st.lists(texts, max_size=MAX_STOP + 1),
                  st.just(["x" * (MAX_STOP_CHARS + 1)])),
    "seed": field(ints, floats, st.sampled_from([2**63, -(2**63) - 1, 1e20])),
    "n": field(st.just(1), ints),
    "replay_output_tokens": field(st.integers(0, 10**6), ints),
    "slo": field(st.fixed_dictionaries({}, optional={"ttft_ms": field(floats, ints), "jct_ms": field(floats, ints),
                                                     "tpot_ms": json_values})),
}
completion_bodies = weighted(bodies({"model": model, "prompt": field(texts, st.lists(texts, min_size=1, max_size=1),
                                                                     st.lists(texts, max_size=3))}, common),
                             st.fixed_dictionaries({}, optional={"model": model, "prompt": json_values}), odds=4)
chat_bodies = weighted(bodies({"model": model, "messages": field(st.lists(message, min_size=1, max_size=3))}, common),
                       st.fixed_dictionaries({}, optional={"model": model, "messages": json_values}), odds=4)
