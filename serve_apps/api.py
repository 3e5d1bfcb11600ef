"""Request and response schemas of the HTTP API, and its error format (OpenAI-style JSON)."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_BODY_BYTES = 64 * 1024  # larger requests get 413
MAX_MESSAGES = 64  # messages per request
MAX_MESSAGE_CHARS = 4000  # characters per message


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request (the fields LaMDA uses; unknown ones are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str = "lamda"
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=512)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    user: str | None = None


class ChatRequest(BaseModel):
    """The native API: one user message, optionally continuing a conversation."""

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    conversation_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    model: str = "lamda"
    trace: bool = True


def error(status: int, message: str, kind: str = "invalid_request_error",
          code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": None,
                                           "code": code}})
