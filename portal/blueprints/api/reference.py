"""The API's reference: the OpenAPI document as JSON and as a page (server-rendered from the
document: no script, nothing from another origin)."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, jsonify, render_template

from . import bp
from .models import OpenApiDocument, StripeEvent, WebhookAck
from .spec import Operation, describe, document, operation

describe(
    "webhooks.receive",
    Operation(
        summary="Stripe's events",
        tag="Webhooks",
        scopes=(),
        body=StripeEvent,
        responses={200: WebhookAck},
        errors=(400, 413, 503),
        headers={
            "Stripe-Signature": {
                "type": "string",
                "description": ("Stripe's signature over the raw body with STRIPE_WEBHOOK_SECRET"),
            }
        },
        description=(
            "No bearer token: the Stripe-Signature header over the raw body authenticates the "
            "event (a bad one is 400 bad_signature and stores nothing). A verified event is "
            "stored once by its id and processed by a job; the answer is 200 at once, with "
            "duplicate true for a redelivery. Handled types: checkout.session.completed, "
            "payment_intent.succeeded, payment_intent.payment_failed, "
            "payment_intent.requires_action, payment_intent.processing, setup_intent.succeeded, "
            "charge.refunded, charge.dispute.created; other types are stored and marked "
            "unhandled. 503 when payments are not configured."
        ),
    ),
)


@bp.get("/openapi.json")
@operation(
    summary="This API's OpenAPI 3.1 document",
    tag="Reference",
    scopes=(),
    responses={200: OpenApiDocument},
)
def openapi_document():
    return jsonify(document(current_app))


@bp.get("/docs")
@operation(
    summary="This API's reference as a page",
    tag="Reference",
    scopes=(),
    responses={200: None},
    media={200: {"text/html": "the reference page"}},
)
def reference():
    return render_template("api/reference.html", **page(document(current_app)))


# -- the page's data ---------------------------------------------------------------------------


def _name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_parts(schema: dict[str, Any]) -> list[tuple[str, str | None]]:
    """A schema as words, with links to named schemas: [(text, anchor or None)]."""
    if "$ref" in schema:
        name = _name(schema["$ref"])
        return [(name, f"#schema-{name}")]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts: list[tuple[str, str | None]] = []
            for n, option in enumerate(schema[key]):
                if n:
                    parts.append((" or ", None))
                parts.extend(type_parts(option))
            return parts
    if "const" in schema:
        return [(json.dumps(schema["const"]), None)]
    if "enum" in schema:
        return [("one of " + ", ".join(json.dumps(v) for v in schema["enum"]), None)]
    kind = schema.get("type")
    if kind == "array":
        return [("list of ", None), *type_parts(schema.get("items", {}))]
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return [("object of ", None), *type_parts(schema["additionalProperties"])]
    if kind is None:
        return [("any", None)]
    text = kind if isinstance(kind, str) else " or ".join(kind)
    if "format" in schema:
        text += f" ({schema['format']})"
    return [(text, None)]


_NOTES = (
    ("minLength", "at least {} character(s)"),
    ("maxLength", "at most {} characters"),
    ("minimum", "from {}"),
    ("exclusiveMinimum", "more than {}"),
    ("maximum", "up to {}"),
    ("maxProperties", "at most {} keys"),
    ("pattern", "matches {}"),
    ("default", "default {}"),
)


def notes(schema: dict[str, Any]) -> list[str]:
    found = []
    for option in [schema, *schema.get("anyOf", [])]:
        for key, text in _NOTES:
            if key in option:
                value = option[key]
                found.append(
                    text.format(json.dumps(value) if key in ("default", "pattern") else value)
                )
    return list(dict.fromkeys(found))


def _description(schema: dict[str, Any]) -> str:
    """The schema's description, or its first option's (an optional field's)."""
    return schema.get("description") or next(
        (option["description"] for option in schema.get("anyOf", []) if "description" in option), ""
    )


def _row(name: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    return {
        "name": name,
        "type": type_parts(schema),
        "required": required,
        "notes": notes(schema),
        "description": _description(schema),
    }


def page(doc: dict[str, Any]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            groups.setdefault(op["tags"][0], []).append(
                {
                    "id": op["operationId"],
                    "method": method.upper(),
                    "path": doc["servers"][0]["url"] + path,
                    "summary": op["summary"],
                    "description": op.get("description", ""),
                    "scopes": op.get("x-scopes", []),
                    "parameters": [
                        {
                            **_row(p["name"], p["schema"], p["required"]),
                            "in": p["in"],
                            "description": p.get("description", ""),
                        }
                        for p in op.get("parameters", [])
                    ],
                    "body": type_parts(body["schema"]) if body else None,
                    "responses": [
                        {
                            "status": status,
                            "description": r["description"],
                            "content": [
                                (media, type_parts(c["schema"]))
                                for media, c in r.get("content", {}).items()
                            ],
                        }
                        for status, r in op["responses"].items()
                    ],
                }
            )
    schemas = []
    for name, schema in doc["components"]["schemas"].items():
        required = set(schema.get("required", []))
        schemas.append(
            {
                "name": name,
                "description": schema.get("description", ""),
                "rows": [
                    _row(prop, sub, prop in required)
                    for prop, sub in schema.get("properties", {}).items()
                ],
                "type": None if "properties" in schema else type_parts(schema),
            }
        )
    return {
        "info": doc["info"],
        "groups": groups,
        "schemas": schemas,
        "security": doc["components"]["securitySchemes"],
    }
