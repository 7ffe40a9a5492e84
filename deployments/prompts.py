"""Turning a request into the prompt the engine runs, and counting its tokens at the edge.

The ingress needs the prompt's token count before anything else happens: for the context-length
check (a 400 answered at the edge, not an engine crash) and for the router's metadata. With an hf
tokenizer the rendered token ids travel to the replica, so it does not tokenize twice. The
``approx`` counter (4 characters a token) serves the replay engine, which has no tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deployments.config import AppConfig, EngineKind
from deployments.protocol import APIError, ParsedRequest, bad_request

REPLAY_CONTEXT_LENGTH = 8192


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    token_ids: list[int] | None
    num_tokens: int


def _plain_chat(messages) -> str:
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


def _apply_template(tok, messages: list[dict]) -> str:
    """The model's chat template on ``messages``. A template may refuse a conversation
    (``raise_exception``: "roles must alternate", "no system role"...): the client's 400. A template
    that does not compile is the deployment's fault: a 500 that says so."""
    import jinja2

    try:
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateSyntaxError as e:
        raise APIError(500, f"this model's chat template is broken: {str(e)[:300]}", type="server_error",
                       code="template_error") from None
    except jinja2.TemplateError as e:
        raise bad_request(f"the model's chat template refused these messages: {str(e)[:500]}", param="messages",
                          code="template_error") from None


class PromptRenderer:
    """Chat template + token count. ``tokenizer`` is None for the approximate counter."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    @classmethod
    def from_config(cls, cfg: AppConfig) -> PromptRenderer:
        name = cfg.ingress.tokenizer
        engine = cfg.llm.engine_kind
        if name is None:
            name = "approx" if engine is EngineKind.REPLAY else cfg.llm.model
        tokenizer = None
        path, kwargs = None, {}
        if name != "approx":
            from transformers import AutoTokenizer

            from proxy_model.offline_models import resolve_model_name

            path, kwargs = resolve_model_name(name)
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        context = cfg.llm.context_length
        if context is None:
            if engine is EngineKind.REPLAY:
                context = REPLAY_CONTEXT_LENGTH
            else:
                from transformers import AutoConfig

                model_path, model_kwargs = resolve_model_name(cfg.llm.model)
                model_config = AutoConfig.from_pretrained(model_path, **model_kwargs)
                context = int(getattr(model_config, "max_position_embeddings", 0) or 2048)
        return cls(tokenizer, context)

    def render(self, req: ParsedRequest) -> RenderedPrompt:
        tok = self.tokenizer
        if req.kind == "chat":
            messages = [{"role": m.role, "content": m.content} for m in req.messages]
            if tok is not None and getattr(tok, "chat_template", None):
                text = _apply_template(tok, messages)
                ids = tok(text, add_special_tokens=False)["input_ids"]
                return RenderedPrompt(text, ids, len(ids))
            text = _plain_chat(req.messages)
        else:
            text = req.prompt
        if tok is None:
            return RenderedPrompt(text, None, max(1, math.ceil(len(text) / 4)))
        ids = tok(text)["input_ids"]
        return RenderedPrompt(text, ids, len(ids))
