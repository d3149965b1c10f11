"""What a model id may be.

An id is a non-empty string of at most 256 UTF-8 bytes with no control characters (which
includes NUL). Anything else is refused before it reaches user code, because ids end up in file
paths, object keys, log lines and HTTP headers.
"""

from __future__ import annotations

from ._errors import ModelIdError

MAX_MODEL_ID_BYTES = 256
MODEL_ID_HEADERS = ("serve_multiplexed_model_id", "serve-multiplexed-model-id")
_HEADER_NAMES = frozenset(name.encode("latin-1") for name in MODEL_ID_HEADERS)


def validate_model_id(model_id: object) -> str:
    """Return ``model_id`` if it is a valid id (or ""), else raise ``ModelIdError``."""
    if not isinstance(model_id, str):
        raise ModelIdError(f"model id must be a string, got {type(model_id).__name__}")
    if len(model_id.encode("utf-8", "surrogatepass")) > MAX_MODEL_ID_BYTES:
        raise ModelIdError(f"model id is longer than {MAX_MODEL_ID_BYTES} bytes")
    for ch in model_id:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            raise ModelIdError(f"model id contains a control character (U+{code:04X})")
        if 0xD800 <= code <= 0xDFFF:
            raise ModelIdError("model id is not valid UTF-8")
    return model_id


def model_id_from_headers(headers: list[tuple[bytes, bytes]]) -> str:
    """The model id an HTTP request names, matched case-insensitively in either spelling."""
    for name, value in headers:
        if name.lower() in _HEADER_NAMES:  # bytes: no decoding of every header name
            # Only the spaces and tabs HTTP allows around a value are dropped (httptools keeps
            # trailing ones). str.strip() would also drop Unicode whitespace such as U+0085 and
            # serve "\x85evil" as "evil" while a handle refuses it: the id is validated as sent.
            try:
                text = value.strip(b" \t").decode("utf-8")
            except UnicodeDecodeError:
                raise ModelIdError("model id header is not valid UTF-8") from None
            return validate_model_id(text)
    return ""
