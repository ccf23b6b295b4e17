"""The route registry and the OpenAPI 3.1 document made from it.

Each API view is declared with ``@operation(...)``: the token scopes it takes, its request
model (body and query string), its response models by status and the errors it can
answer. The decorator does what every view did by hand (authenticate, parse, validate,
serialize), and the document is generated once from the app's URL map and these
declarations, so every route is in it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Flask, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.routing import IntegerConverter, Rule

from ...errors import NotFound
from ...models import TokenScope
from ...services.events.catalog import API_VERSION, EVENT_TYPES
from ...services.webhooks.signing import HEADER as SIGNATURE_HEADER
from .auth import authenticate
from .fields import EXTERNAL_ID_RULE, IDEMPOTENCY_KEY_SCHEMA, MAX_ID, parse_body, parse_query
from .models import ErrorBody

PREFIX = "/api/plugins/billing"
ERROR_TEXT = {
    400: "Bad request",
    401: "No valid bearer token (error.code unauthorized)",
    403: "The token's scope does not allow this, or it names another user (forbidden)",
    404: "No such object, or not the caller's (not_found)",
    409: "The object's state does not allow this, or an idempotency key was used for other "
    "content (conflict, invalid_transition, idempotency_conflict)",
    413: "The request body is too large",
    422: "A field was refused (validation_failed): error.fields names each one; nothing "
    "was changed",
    429: "Too many attempts (rate_limited); try again after Retry-After seconds",
    502: "The payment gateway failed (gateway_error)",
    503: "Card payments are not configured on this portal (payments_unavailable)",
}
SUCCESS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted: the job is queued",
    204: "Done; no content",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    scopes: tuple[str, ...]
    responses: dict[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    body_optional: bool = False
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    idempotency_key: str | None = None  # what the Idempotency-Key header does, if taken
    media: dict[int, dict[str, str]] = field(default_factory=dict)  # other content types
    path: dict[str, dict[str, Any]] = field(default_factory=dict)  # string path parameters
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)  # other request headers
    description: str = ""


def operation(
    *,
    summary: str,
    tag: str,
    scopes: Iterable[TokenScope | str],
    responses: dict[int, type[BaseModel] | None],
    body: type[BaseModel] | None = None,
    body_optional: bool = False,
    query: type[BaseModel] | None = None,
    errors: Iterable[int] = (),
    idempotency_key: str | None = None,
    media: dict[int, dict[str, str]] | None = None,
    path: dict[str, dict[str, Any]] | None = None,
) -> Callable:
    """Declare an API view. The view receives its path arguments plus ``body=`` and
    ``query=`` (validated models) when declared, and returns a response model, a
    (model, status) pair, None (204) or a Flask Response (files)."""
    scope_names = tuple(str(s) for s in scopes)

    def decorator(view: Callable) -> Callable:
        op = Operation(
            summary=summary,
            tag=tag,
            scopes=scope_names,
            responses=responses,
            body=body,
            body_optional=body_optional,
            query=query,
            errors=tuple(errors),
            idempotency_key=idempotency_key,
            media=media or {},
            path=path or {},
            description=inspect.cleandoc(view.__doc__ or "").replace("``", "`"),
        )

        @wraps(view)
        def wrapped(**kwargs: Any):
            if op.scopes:
                authenticate(op.scopes)
            _check_path(op, kwargs)
            if op.query is not None:
                kwargs["query"] = parse_query(op.query)
            if op.body is not None:
                kwargs["body"] = parse_body(op.body, optional=op.body_optional)
            return render(view(**kwargs))

        wrapped.api_operation = op  # type: ignore[attr-defined]
        return wrapped

    return decorator


def _check_path(op: Operation, kwargs: dict[str, Any]) -> None:
    """A path that cannot name an object is not found (ids beyond a database integer,
    external ids outside their character set)."""
    for name, value in kwargs.items():
        if isinstance(value, int) and not 1 <= value <= MAX_ID:
            raise NotFound(f"no {name.replace('_', ' ')} {value}")
        if name == "external_id" and not EXTERNAL_ID_RULE.fullmatch(value):
            raise NotFound(f"no deployment {value!r}")
        if name in op.path and "enum" in op.path[name] and value not in op.path[name]["enum"]:
            raise NotFound(f"no {name} {value!r}")


def render(result: Any) -> Any:
    if isinstance(result, (Response, str)):  # a file, a page
        return result
    status = 200
    if isinstance(result, tuple):
        result, status = result
    if result is None:
        return "", 204
    return jsonify(result.model_dump(mode="json", by_alias=True, exclude_none=False)), status


# Routes under the prefix that other blueprints own are described here by endpoint.
EXTERNAL: dict[str, Operation] = {}


def describe(endpoint: str, op: Operation) -> None:
    EXTERNAL[endpoint] = op


def operation_of(app: Flask, endpoint: str) -> Operation | None:
    view = app.view_functions.get(endpoint)
    return getattr(view, "api_operation", None) or EXTERNAL.get(endpoint)


def api_rules(app: Flask) -> list[tuple[Rule, str]]:
    """(rule, method) for every API route, HEAD and OPTIONS aside."""
    return sorted(
        (
            (rule, method)
            for rule in app.url_map.iter_rules()
            if rule.rule.startswith(PREFIX + "/")
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
        ),
        key=lambda pair: (pair[0].rule, pair[1]),
    )


def openapi_path(rule: Rule) -> str:
    path = rule.rule[len(PREFIX) :]
    for name in rule.arguments:
        for converter in ("int:", "string:", ""):
            path = path.replace(f"<{converter}{name}>", "{" + name + "}")
    return path


# -- the document ----------------------------------------------------------------------------


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document, built on first use and kept."""
    cached = app.extensions.get("api.openapi")
    if cached is None:
        cached = app.extensions["api.openapi"] = build(app)
    return cached


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def build(app: Flask) -> dict[str, Any]:
    rules = api_rules(app)
    ops = []
    for rule, method in rules:
        op = operation_of(app, rule.endpoint)
        if op is None:
            raise LookupError(
                f"{method} {rule.rule} ({rule.endpoint}) is not declared with @operation"
            )
        ops.append((rule, method, op))
    schemas = _schemas(op for _, _, op in ops)
    webhooks = _webhooks(schemas["components"])
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    for rule, method, op in ops:
        operation_id = rule.endpoint.rsplit(".", 1)[-1]
        if operation_id in seen_ids:
            operation_id += "_" + "_".join(
                p for p in openapi_path(rule).split("/") if p and "{" not in p
            )
        seen_ids.add(operation_id)
        paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation(
            rule, op, operation_id, schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Billing portal API",
            "version": "1",
            "description": (
                "Bearer tokens (Account menu › API tokens, or `flask billing create-token`) "
                "of scope user, admin or platform; each operation lists the scopes it "
                "takes. Money goes out as a decimal string, integer minor units and the "
                "currency, and comes in as a JSON number or a string of digits (exact "
                "decimals, at most 1000000000, no more decimal places than the currency "
                'has). Every error is `{"error": {"code", "message", "fields"}}`; '
                "a 422 names each refused field in `fields` and changes nothing. Unknown "
                "fields in a request body are refused."
            ),
        },
        "servers": [{"url": PREFIX}],
        "paths": paths,
        "webhooks": webhooks,
        "components": {
            "schemas": dict(sorted(schemas["components"].items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token; its scope (user, admin or platform) is "
                    "listed as the role each operation requires.",
                }
            },
        },
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for _, _, op in ops)]
        + [{"name": WEBHOOKS_TAG, "description": WEBHOOKS_TEXT}],
    }


WEBHOOKS_TAG = "Events (webhooks to the platform)"
WEBHOOKS_TEXT = (
    "The portal POSTs each event to the platform's registered endpoints (Admin › Webhooks), "
    f"signed in the {SIGNATURE_HEADER} header: t=<unix time>,v1=<hex HMAC-SHA256 of "
    "'<t>.<raw body>' keyed with the endpoint's secret> (two v1 values for a day after a "
    "rotation). Idempotency-Key is the event id: delivery is at least once, in order per "
    "user. Any 2xx answer is success; anything else is retried with backoff for 3 days. "
    "GET /events returns the same envelopes."
)


def _webhooks(components: dict[str, Any]) -> dict[str, Any]:
    """The ``webhooks`` section, from the events catalogue: one POST per event, its envelope
    and its data schema (added to ``components``)."""
    models = {t.data for t in EVENT_TYPES.values()}
    _, top = models_json_schema(
        [(m, "serialization") for m in models], ref_template="#/components/schemas/{model}"
    )
    for name, schema in top.get("$defs", {}).items():
        if name in components and components[name] != schema:
            raise ValueError(f"event schema {name} clashes with an API schema")
        components[name] = schema
    section: dict[str, Any] = {}
    for name, event in EVENT_TYPES.items():
        envelope = {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "type", "created", "api_version", "data"],
            "properties": {
                "id": {"type": "integer", "description": "the event's id (also Idempotency-Key)"},
                "type": {"const": name},
                "created": {"type": "string", "format": "date-time"},
                "api_version": {"const": API_VERSION},
                "data": _ref(event.data),
            },
        }
        description = event.summary + "."
        if not event.recorded:
            description += " Catalogued ahead of its cause: not recorded yet."
        section[name] = {
            "post": {
                "operationId": "event_" + name.removeprefix("billing.").replace(".", "_"),
                "summary": event.summary,
                "description": description,
                "tags": [WEBHOOKS_TAG],
                "parameters": [
                    {
                        "name": SIGNATURE_HEADER,
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^t=[0-9]+(,v1=[0-9a-f]{64})+$"},
                    },
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": envelope}},
                },
                "responses": {
                    "2XX": {"description": "Received; any other answer is retried"},
                },
            }
        }
    return section


def _schemas(ops: Iterable[Operation]) -> dict[str, Any]:
    """Every model's JSON Schema under components, and each query model's properties."""
    models: dict[type[BaseModel], JsonSchemaMode] = {ErrorBody: "serialization"}
    ops = list(ops)
    for op in ops:
        if op.body is not None:
            models[op.body] = "validation"
        for model in op.responses.values():
            if model is not None:
                models[model] = "serialization"
    queries = {op.query for op in ops if op.query is not None}
    # Query models are not components: their properties become parameters.
    keys = [(m, mode) for m, mode in models.items()] + [(q, "validation") for q in queries]
    mapping, top = models_json_schema(keys, ref_template="#/components/schemas/{model}")
    components = dict(top.get("$defs", {}))
    query_props: dict[type[BaseModel], dict[str, Any]] = {}
    for query in queries:
        ref = mapping[(query, "validation")]["$ref"].rsplit("/", 1)[-1]
        query_props[query] = components.pop(ref)
    return {"components": dict(sorted(components.items())), "queries": query_props}


def _operation(
    rule: Rule, op: Operation, operation_id: str, schemas: dict[str, Any]
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    for name in sorted(rule.arguments):
        converter = rule._converters[name]  # werkzeug keeps them here
        if isinstance(converter, IntegerConverter):
            schema: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        elif name == "external_id":
            schema = {
                "type": "string",
                "pattern": EXTERNAL_ID_RULE.pattern,
                "minLength": 1,
                "maxLength": 128,
            }
        else:
            schema = op.path.get(name, {"type": "string"})
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        props = schemas["queries"][op.query]
        for name, schema in props.get("properties", {}).items():
            schema = dict(schema)
            description = schema.pop("description", None)
            schema.pop("title", None)
            param = {
                "name": name,
                "in": "query",
                "required": name in props.get("required", []),
                "schema": schema,
            }
            if description:
                param["description"] = description
            parameters.append(param)
    if op.idempotency_key:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": op.idempotency_key,
                "schema": IDEMPOTENCY_KEY_SCHEMA,
            }
        )
    for name, schema in op.headers.items():
        parameters.append({"name": name, "in": "header", "required": True, "schema": schema})

    responses: dict[str, Any] = {}
    for status, model in sorted(op.responses.items()):
        response: dict[str, Any] = {"description": SUCCESS_TEXT.get(status, "OK")}
        content = {}
        if model is not None:
            content["application/json"] = {"schema": _ref(model)}
        for media_type, text in op.media.get(status, {}).items():
            content[media_type] = {"schema": {"type": "string", "description": text}}
        if content:
            response["content"] = content
        responses[str(status)] = response
    errors = set(op.errors)
    if op.scopes:
        errors |= {401, 403}
    if op.body is not None or op.query is not None or op.idempotency_key:
        errors.add(422)
    if op.body is not None:
        errors.add(413)
    if rule.arguments:
        errors.add(404)
    for status in sorted(errors):
        response = {
            "description": ERROR_TEXT[status],
            "content": {"application/json": {"schema": _ref(ErrorBody)}},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
            }
        responses[str(status)] = response

    result: dict[str, Any] = {"operationId": operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        result["description"] = op.description
    if op.scopes:
        result["security"] = [{"bearer": [scope]} for scope in op.scopes]
        result["x-scopes"] = list(op.scopes)
    else:
        result["security"] = []
    if parameters:
        result["parameters"] = parameters
    if op.body is not None:
        result["requestBody"] = {
            "required": not op.body_optional,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    result["responses"] = responses
    return result
