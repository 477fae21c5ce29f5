"""Request validation: bad input fails here, naming the field, before any network call.

It runs on every call, the cache-hit path included, so it checks only what is cheap and
what a gateway would otherwise reject after a round trip (or worse, accept and bill).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

from limpet._checks import header_problem, is_text
from limpet.errors import InvalidRequestError, headers_shape
from limpet.pipeline.wire_shapes import (
    MESSAGE_SHAPES,
    check_content,
    check_message,
    check_response_format,
    check_tools,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_SECONDS",
    "ROLES",
    "json_problem",
    "response_format_param",
    "strict_json_schema",
    "validate_call_options",
    "validate_fields",
    "validate_request",
    "validate_tenant",
    "validate_ttl",
    "with_extra_body",
]

# "function": the deprecated reply to a ``function_call``, still in the OpenAI SDK's types
# (``ChatCompletionFunctionMessageParam``) and accepted by the API.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The roles a message of just a role and a str content may have (a tool message needs more).
_PLAIN_ROLES = ROLES - MESSAGE_SHAPES.keys()
_ROLES_TEXT = "one of " + ", ".join(sorted(ROLES))
_JSON_TEXT = "JSON: a str, a finite number, a bool, None, a list or a dict with str keys"
_RESPONSE_FORMAT_TEXT = (
    "a dict such as {'type': 'json_object'}, or a Pydantic model class (sent as a "
    "strict 'json_schema' format, as the OpenAI SDK does)"
)
_KEY_TEXT = "a dict whose keys are valid UTF-8 text (no lone surrogate)"
_NUMBER_TYPES = (int, float)
# The ints JSON can carry here: orjson writes none wider than 64 bits (signed or not).
_INT64_LOW, _UINT64_HIGH = -(2**63), 2**64 - 1

#: The deepest a request's JSON may nest, the body itself included (orjson writes no
#: deeper).
MAX_JSON_DEPTH = 254
#: The longest TTL or timeout, in seconds (ten years): every tier can hold its expiry
#: (Redis's PX in milliseconds, Memcached's unix time), and nothing longer means anything.
MAX_SECONDS = 10 * 365 * 24 * 3600


def validate_request(body: Mapping[str, Any]) -> int:
    """Check a chat-completion request body.

    Returns:
        The summed length of the messages' contents when every message is a plain
        ``{"role", "content": str}`` (what ``keys.looks_large`` would sum), else -1.

    Raises:
        InvalidRequestError: naming the first offending field and what was expected.
    """
    # The common case runs on every call, hits included: one pass, no helper calls.
    model = body.get("model")
    if type(model) is not str or not model or model.isspace() or not model.isascii():
        check_model(model)
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        raise InvalidRequestError("messages", "a non-empty list of message dicts", messages)
    chars = 0
    try:
        for message in messages:
            # Anything but {"role", "content": str} takes the long way, which checks it
            # is JSON.
            if (
                type(message) is not dict
                or len(message) != 2
                or message.get("role") not in _PLAIN_ROLES
            ):
                break
            content = message.get("content")
            if type(content) is not str:
                break
            chars += len(content)
        else:
            _check_parameters(body)
            return chars
    except TypeError:  # an unhashable role (a list, say): the long way names it
        pass
    for index, message in enumerate(messages):
        _check_message(index, message)
    _check_parameters(body)
    return -1


def check_model(model: object) -> str:
    """``model``, if it can name a model: a str of text, not blank (a lone surrogate can
    be neither sent nor stored: taken to a shared store, it failed there as if the store
    had).

    Raises:
        InvalidRequestError: naming ``model``.
    """
    if type(model) is not str or not model or model.isspace() or not is_text(model):
        raise InvalidRequestError("model", "a non-empty str of text", model)
    return model


def validate_fields(fields: Mapping[str, Any]) -> None:
    """Check request fields other than a chat's ``model`` and ``messages`` (an embedding
    request's, say): each by its own rule when it has one (``user`` a str...), else as
    JSON, and as what writing it would find.

    Raises:
        InvalidRequestError: naming the first offending field.
    """
    _check_parameters(fields)
    problem = json_problem(fields)
    if problem is not None:
        raise problem


def validate_ttl(ttl: object, field: str = "ttl") -> float | None:
    """A TTL (or timeout) in seconds: None, or a number > 0 and at most ``MAX_SECONDS``."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_SECONDS:
        raise InvalidRequestError(
            field, f"a number of seconds > 0 and at most {MAX_SECONDS} (ten years), or None", ttl
        )
    return float(ttl)


def validate_tenant(tenant: object) -> str:
    """``tenant`` (``complete(tenant=...)``), if it can name one: a non-empty str of text.

    Raises:
        InvalidRequestError: naming ``tenant``.
    """
    if type(tenant) is not str or not tenant or not is_text(tenant):
        raise InvalidRequestError("tenant", "a non-empty str of text, or None", tenant)
    return tenant


def validate_call_options(
    timeout: object, extra_headers: object
) -> tuple[float | None, dict[str, str] | None]:
    """Check the OpenAI SDK's per-call ``timeout`` and ``extra_headers``; returns the
    timeout in seconds (None: no deadline) and a copy of the headers (None: none). The
    call keeps the copy: the credential it is keyed under is the one it sends, whatever
    the caller does with its own dict meanwhile.

    Raises:
        InvalidRequestError: naming the field; headers are described by their names and
            the types of their values (``headers_shape``), never their values, which
            hold keys.
    """
    headers = None
    if extra_headers is not None:
        if isinstance(extra_headers, Mapping):
            headers = dict(extra_headers)
        if headers is None or not all(
            type(k) is str and type(v) is str for k, v in headers.items()
        ):
            raise InvalidRequestError(
                "extra_headers",
                "a dict of str to str, or None",
                described=headers_shape(extra_headers),
            )
        for name, value in headers.items():
            problem = header_problem(name, value)
            if problem is not None:
                raise InvalidRequestError(
                    "extra_headers", "headers that can be sent", described=problem
                )
    return validate_ttl(timeout, "timeout"), headers


def with_extra_body(body: dict[str, Any], extra_body: object) -> dict[str, Any]:
    """``body`` with the OpenAI SDK's per-call ``extra_body`` fields merged in (they win)."""
    if not isinstance(extra_body, Mapping) or not all(type(k) is str for k in extra_body):
        raise InvalidRequestError("extra_body", "a dict with str keys, or None", extra_body)
    return {**body, **extra_body}


def response_format_param(value: object) -> object:
    """A Pydantic model class as the OpenAI SDK sends it: a strict ``json_schema`` format
    named after the class. Anything else is returned as is (``validate_request`` judges it).

    Pydantic is not imported: a class with ``model_json_schema()`` is taken for a model.
    """
    json_schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(json_schema):
        schema = strict_json_schema(json_schema())
        return {
            "type": "json_schema",
            "json_schema": {"name": value.__name__, "schema": schema, "strict": True},
        }
    return value


def strict_json_schema(schema: object) -> Any:
    """A JSON schema as OpenAI's strict mode wants it, by the OpenAI SDK's rules
    (``openai.lib._pydantic.to_strict_json_schema``), so that a model class is sent as
    the SDK sends it, byte for byte: every ``type: object`` closed
    (``additionalProperties: false``), every ``properties`` all required, a lone ``allOf``
    inlined, ``default: null`` dropped, and a ``$ref`` with sibling keys (a described
    nested model: strict mode refuses it) replaced by what it refers to, the siblings
    winning. Like the SDK, it descends only through ``$defs``, ``definitions``,
    ``properties``, ``items``, ``anyOf`` and ``allOf``. ``schema`` is not changed; what
    is not a dict is returned as is.

    Raises:
        InvalidRequestError: naming ``response_format``, for a ``$ref`` with siblings
            that does not resolve to a dict in ``schema``, or whose inlining never ends
            (a model that must hold itself).
    """
    if not isinstance(schema, dict):
        return schema
    root = copy.deepcopy(schema)
    return _strict(root, root, frozenset())


def _strict(schema: dict[str, Any], root: dict[str, Any], inlining: frozenset[str]) -> Any:
    """Make ``schema`` (within ``root``) strict in place, in the SDK's order, for its key
    order is the wire's and enters the cache key; returns it. ``inlining``: the
    ``$ref``s being inlined around it, a cycle among which would never end."""
    for name in ("$defs", "definitions"):
        defs = schema.get(name)
        if isinstance(defs, dict):
            for definition in defs.values():
                _strict_any(definition, root, inlining)  # in place, as the SDK does
    if schema.get("type") == "object" and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    properties = schema.get("properties")
    if isinstance(properties, dict):
        # Only with properties: the SDK gives a map (``dict[str, int]``) no "required".
        schema["required"] = list(properties)
        schema["properties"] = {
            name: _strict_any(value, root, inlining) for name, value in properties.items()
        }
    items = schema.get("items")
    if isinstance(items, dict):
        schema["items"] = _strict(items, root, inlining)
    any_of = schema.get("anyOf")
    if isinstance(any_of, list):
        schema["anyOf"] = [_strict_any(variant, root, inlining) for variant in any_of]
    all_of = schema.get("allOf")
    if isinstance(all_of, list):
        if len(all_of) == 1 and isinstance(all_of[0], dict):
            schema.update(_strict(all_of[0], root, inlining))
            del schema["allOf"]
        else:
            schema["allOf"] = [_strict_any(entry, root, inlining) for entry in all_of]
    if "default" in schema and schema["default"] is None:
        del schema["default"]  # still nullable; the model defaults to None all the same
    ref = schema.get("$ref")
    if ref and len(schema) > 1:
        if type(ref) is not str or ref in inlining:
            raise InvalidRequestError(
                "response_format",
                "a schema whose described $ref can be inlined (no model that holds itself)",
                ref,
            )
        # A copy: the definition stays whole in $defs, and nothing is shared twice.
        resolved = copy.deepcopy(_resolve_ref(root, ref))
        schema.update({**resolved, **schema})
        del schema["$ref"]
        # What was inlined was made strict in $defs, but not as a whole with its siblings.
        return _strict(schema, root, inlining | {ref})
    return schema


def _strict_any(schema: object, root: dict[str, Any], inlining: frozenset[str]) -> Any:
    return _strict(schema, root, inlining) if isinstance(schema, dict) else schema


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    """The dict ``ref`` (``#/a/b``, a JSON pointer as the SDK reads it) points to in
    ``root``."""
    resolved: object = root
    if ref.startswith("#/"):
        for part in ref[2:].split("/"):
            resolved = resolved.get(part) if isinstance(resolved, dict) else None
    else:
        resolved = None
    if not isinstance(resolved, dict):
        raise InvalidRequestError(
            "response_format", "a schema whose described $ref points to a dict within it", ref
        )
    return resolved


def _check_message(index: int, message: object) -> None:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"messages[{index}]", "a dict with 'role' and 'content'", message)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a str first: a list is unhashable
        raise InvalidRequestError(f"messages[{index}].role", _ROLES_TEXT, role)
    path = f"messages[{index}]"
    _check_json(message, path, depth=3)  # in the body, in its messages
    content = message.get("content")
    if isinstance(content, list):
        check_content(content, f"{path}.content")
    elif not isinstance(content, str) and not (
        content is None
        and (
            role == "function"
            or (role == "assistant" and (message.get("tool_calls") or message.get("function_call")))
        )
    ):
        raise InvalidRequestError(f"{path}.content", "a str or a list of content parts", content)
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRequestError(f"{path}.name", "a str", name)
    check_message(message, role, path)


def _check_parameters(body: Mapping[str, Any]) -> None:
    # One pass: a field with a known shape is checked by its own rule (a number's range
    # inline, for it is the common case); any other is checked to be JSON (orjson would
    # send NaN as null, and fail on an object).
    for name, value in body.items():
        kind = type(value)
        check = _FIELD_CHECKS.get(name)
        if check is None:
            if kind is str or kind is int or kind is bool or value is None:
                continue
            if kind is float:
                if not math.isfinite(value):
                    raise InvalidRequestError(name, "a finite number", value)
            elif name != "messages":  # checked message by message
                _check_json(value, name)
        elif type(check) is _Range:
            # Exact types: bool is an int subclass, and True is no temperature.
            if value is not None and (
                kind not in check.types or not check.low <= value <= check.high
            ):
                raise InvalidRequestError(name, check.expected, value)
        else:
            check(name, value)  # type: ignore[operator]


class _Range:
    """A number field's rule: None, or one of ``types`` from ``low`` to ``high``. (A
    class with slots, not a named tuple: the hit path reads its fields on every call.)"""

    __slots__ = ("expected", "high", "low", "types")

    def __init__(self, types: tuple[type, ...], low: float, high: float, expected: str):
        self.types = types
        self.low = low
        self.high = high
        self.expected = expected


def _in_range(low: float, high: float) -> _Range:
    return _Range(_NUMBER_TYPES, low, high, f"a number from {low:g} to {high:g}")


_COUNT = _Range((int,), 1, math.inf, "an int >= 1")


def _tools(name: str, value: object) -> None:
    if value is None:
        return
    _check_json(value, name)
    check_tools(value, name)


def _tool_choice(name: str, value: object) -> None:
    if value is None or type(value) is str:
        return
    if type(value) is not dict:
        raise InvalidRequestError(name, "'none', 'auto', 'required' or a dict naming a tool", value)
    _check_json(value, name)


def _response_format(name: str, value: object) -> None:
    if value is None:
        return
    if type(value) is not dict or type(kind := value.get("type")) is not str:
        raise InvalidRequestError(name, _RESPONSE_FORMAT_TEXT, value)
    _check_json(value, name)
    check_response_format(value, kind, name)


def _flag(name: str, value: object) -> None:
    if value is not None and type(value) is not bool:
        raise InvalidRequestError(name, "a bool", value)


def _int(name: str, value: object) -> None:
    if value is not None and type(value) is not int:
        raise InvalidRequestError(name, "an int", value)


def _text(name: str, value: object) -> None:
    if value is not None and type(value) is not str:
        raise InvalidRequestError(name, "a str", value)


def _stop(name: str, value: object) -> None:
    if value is None or type(value) is str:
        return
    if not isinstance(value, list | tuple) or not all(type(s) is str for s in value):
        raise InvalidRequestError(name, "a str or a list of str", value)


def _unsupported(name: str, value: object) -> None:
    if value is not None:
        raise InvalidRequestError(name, _UNSUPPORTED[name], value)


_UNSUPPORTED = {
    # The OpenAI SDK's per-call query parameters: sent as a body field they would be
    # refused by a strict upstream and ignored by a lenient one.
    "extra_query": "nothing: limpet sends no query parameters (put fields in extra_body)",
}


def _logit_bias(name: str, value: object) -> None:
    if value is None:
        return
    if type(value) is not dict or not all(type(v) in _NUMBER_TYPES for v in value.values()):
        raise InvalidRequestError(name, "a dict of token id to a number", value)
    _check_json(value, name)


_FIELD_CHECKS: dict[str, Callable[[str, object], None] | _Range] = {
    "temperature": _in_range(0.0, 2.0),
    "top_p": _in_range(0.0, 1.0),
    "frequency_penalty": _in_range(-2.0, 2.0),
    "presence_penalty": _in_range(-2.0, 2.0),
    "max_tokens": _COUNT,
    "max_completion_tokens": _COUNT,
    "n": _COUNT,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "response_format": _response_format,
    "logit_bias": _logit_bias,
    "logprobs": _flag,
    "top_logprobs": _Range((int,), 0, 20, "an int from 0 to 20"),
    "parallel_tool_calls": _flag,
    "seed": _int,
    "stop": _stop,
    "user": _text,
    "extra_query": _unsupported,
}


def _check_json(value: object, path: str, *, exact: bool = False, depth: int = 2) -> None:
    """Raise naming the first place in ``value`` that JSON cannot hold (orjson would send
    NaN as null, and raise a bare TypeError for an object), or that is nested deeper than
    orjson writes (``MAX_JSON_DEPTH``: deeper still, this walk would overflow the stack).
    ``depth``: the depth ``value`` has in the body (a field's: 2; a message's: 3).
    ``exact`` also checks what only writing it would find, at a cost not paid on every
    call: an int wider than 64 bits, a str (a value or a dict's key) that is not valid
    UTF-8 (a lone surrogate)."""
    if isinstance(value, str):
        if exact and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise InvalidRequestError(
                    path, "valid UTF-8 text (no lone surrogate)", value
                ) from None
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if exact and not _INT64_LOW <= value <= _UINT64_HIGH:
            raise InvalidRequestError(path, "an int that fits in 64 bits", value)
        return
    if type(value) is float:  # exactly: orjson cannot write float subclasses (numpy's)
        if not math.isfinite(value):
            raise InvalidRequestError(path, "a finite number", value)
        return
    if isinstance(value, dict):
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(path)
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequestError(path, "a dict with str keys", key)
            if exact and not is_text(key):  # a key is written as a str is
                raise InvalidRequestError(path, _KEY_TEXT, key)
            _check_json(item, f"{path}.{key}", exact=exact, depth=depth + 1)
        return
    if isinstance(value, list | tuple):
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(path)
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", exact=exact, depth=depth + 1)
        return
    raise InvalidRequestError(path, _JSON_TEXT, value)


def _too_deep(path: str) -> InvalidRequestError:
    return InvalidRequestError(
        path,
        f"JSON nested at most {MAX_JSON_DEPTH} deep, the request body itself included",
        described="deeper still",
    )


def json_problem(body: Mapping[str, Any]) -> InvalidRequestError | None:
    """What orjson could not write in ``body``, naming the field; None when nothing.
    A full walk: run once writing failed, to name what the checks on every call left to
    the writer, and on the few fields of an ``embed()`` call (``validate_fields``)."""
    for name, value in body.items():
        if type(name) is str and not is_text(name):
            return InvalidRequestError("request body", _KEY_TEXT, name)
        try:
            _check_json(value, name, exact=True)
        except InvalidRequestError as problem:
            return problem
    return None
