"""Request and response schemas of the HTTP API, and its error format (OpenAI-style JSON).

The OpenAI-compatible request honours every sampling parameter it accepts. Known OpenAI parameters
that LaMDA cannot honour (tools, structured output, audio, penalties) get 400 naming the parameter
unless they carry their no-op value; fields unknown to OpenAI are ignored and logged, as vLLM does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_BODY_BYTES = 64 * 1024  # larger requests get 413
MAX_MESSAGES = 64  # messages per request
MAX_MESSAGE_CHARS = 4000  # characters per message
MAX_TOKENS = 512  # most tokens a reply may be asked to hold
MAX_CHOICES = 16  # n: at most the candidates sample-and-rank draws (paper: 16)
SAFE_INT = 2 ** 53 - 1  # integers JSON numbers hold exactly
ID_PATTERN = r"^[A-Za-z0-9_-]+$"  # conversation ids
NO_NUL = r"^[^\x00]*$"  # stored text (PostgreSQL's text holds no NUL character)


def Int(lo: int, hi: int):  # noqa: N802 (a type)
    """An integer in [lo, hi]. The request models are strict (no "5" for 5, no 0 for false), but
    an integral JSON number such as 5.0 is an integer to JSON Schema, so it is one here too."""
    return Annotated[int, Field(ge=lo, le=hi), BeforeValidator(
        lambda v: int(v) if isinstance(v, float) and v.is_integer() and abs(v) <= SAFE_INT else v)]


class ContentPart(BaseModel):
    """A part of a message's content; only text parts are accepted."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"] = Field(description="only text parts")
    text: str = Field(default="", max_length=MAX_MESSAGE_CHARS)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="system and developer messages become pre-conditioning turns of LaMDA at the "
                    "start of the context (after the role's own), in their order")
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] | \
        Annotated[list[ContentPart], Field(max_length=MAX_MESSAGES)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


Stop = Annotated[str, Field(max_length=64)]  # a stop string


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = False  # a last chunk with usage and no choices


# Known OpenAI parameters LaMDA cannot honour -> the values that ask for nothing (accepted).
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "tools": lambda v: not v,
    "functions": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none"),
    "function_call": lambda v: v in (None, "none"),
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
    "logit_bias": lambda v: not v,
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "web_search_options": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
}
# Known OpenAI parameters with no effect on a reply, accepted silently.
IGNORED = {"store", "metadata", "service_tier", "parallel_tool_calls", "safety_identifier",
           "prompt_cache_key", "verbosity"}


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: str = "lamda"
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Int(1, MAX_TOKENS) | None = Field(default=None,
                                   description="most tokens in each returned reply")
    max_completion_tokens: Int(1, MAX_TOKENS) | None = Field(default=None,
                                              description="the same as max_tokens (wins if both)")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0,
                                      description="0: greedy, the same reply every time")
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: Int(1, 1000) | None = Field(default=None,
                              description="extension: sample among the k likeliest (paper: 40)")
    seed: Int(-SAFE_INT, SAFE_INT) | None = Field(default=None,
                             description="the same seed and request give the same reply")
    stop: Stop | Annotated[list[Stop], Field(max_length=4)] | None = Field(
        default=None, description="replies end before the first of these (up to 4)")
    n: Int(1, MAX_CHOICES) = Field(default=1,
                   description="choices: the turn's reply, then the next best safe candidates "
                               "(fewer when the safety filter leaves fewer)")
    logprobs: bool = Field(default=False, description="log-probabilities of each reply's tokens")
    top_logprobs: Int(0, 20) | None = Field(default=None,
                                     description="alternatives per token (implies logprobs)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256,
                             description="keeps the toolset's per-user state across requests")

    def stops(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stop if s)

    def logprob_count(self) -> int | None:
        """Alternatives per token when logprobs are asked for (`top_logprobs` asks too), else None."""
        return self.top_logprobs or 0 if self.logprobs or self.top_logprobs is not None else None

    def reply_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def refused(self) -> str | None:
        """Why this request cannot be honoured (a 400), or None."""
        extra = self.model_extra or {}
        for name, no_op in UNSUPPORTED.items():
            if name in extra and not no_op(extra[name]):
                return f"{name}: not supported by this model (LaMDA replies with text only)"
        return None

    def unknown_fields(self) -> list[str]:
        return sorted(set(self.model_extra or {}) - set(UNSUPPORTED) - IGNORED)


class ChatRequest(BaseModel):
    """The native API: one user message, optionally continuing a conversation. It takes no
    sampling settings (those are the Serve config's, or the OpenAI API's per request), so any
    other field is refused rather than silently ignored."""

    model_config = ConfigDict(strict=True, extra="forbid")
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS, pattern=NO_NUL)
    conversation_id: str | None = Field(default=None, max_length=64, pattern=ID_PATTERN)
    model: str = "lamda"
    trace: bool = True


class RatingRequest(BaseModel):
    """A person's rating of a reply, or of one of its candidates (paper §4-5's rubric)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    conversation_id: str = Field(max_length=64, pattern=ID_PATTERN)
    turn: Int(0, SAFE_INT) = Field(description="index of the LaMDA turn (`turn` of /chat's answer)")
    candidate: Int(0, 1023) | None = Field(
        default=None, description="index in the turn's trace.candidates; omitted: the reply")
    rater: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
                       description="a name labelling the rater's votes; it authorises nothing")
    ssi: Literal["not_sensible", "sensible", "specific", "interesting"] = Field(
        description="the highest rung reached of the cascade sensible => specific => interesting "
                    "(not sensible: not specific and not interesting; not specific: not "
                    "interesting)")
    safe: bool = Field(description="violates none of the safety objectives")
    grounded: bool | None = Field(default=None, description="its claims about the external world "
                                  "are supported by authoritative sources; null: it makes none")
    helpful: bool | None = Field(default=None, description="correct and useful to the user; "
                                 "null: not rated")
    note: str = Field(default="", max_length=2000, pattern=NO_NUL)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error(status: int, message: str, kind: str = "invalid_request_error",
          code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": None,
                                           "code": code}})


def documented(*statuses: int) -> dict:
    """OpenAPI `responses` for these error statuses (all with the error format)."""
    why = {400: "a parameter this model cannot honour, or a body that cannot be parsed", 401: "missing or wrong API key",
           404: "unknown model, conversation, turn or candidate", 413: "request body too large", 422: "invalid request",
           503: "a deployment the turn needs is unavailable, or the turn was cancelled; retry"}
    return {s: {"model": ErrorResponse, "description": why[s]} for s in statuses}
