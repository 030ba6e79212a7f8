"""The HTTP API reference in Markdown, rendered from the OpenAPI document.

The OpenAPI document is the contract the server is tested against; rendering the reference from
it keeps the two from drifting. ``python -m quotagate.api.reference > docs/api-reference.md``
writes the committed copy, and a test checks that the copy is current.
"""

from __future__ import annotations

import sys
from typing import Any

from quotagate.api.openapi import openapi_document
from quotagate.config import Config, load_config

METHODS = ("get", "put", "post", "delete", "patch")


def render(document: dict[str, Any]) -> str:
    """The whole reference: every operation, then every schema."""
    lines = [
        "# HTTP API reference",
        "",
        "Rendered from the gateway's OpenAPI document (`GET /openapi.json`) by",
        "`python -m quotagate.api.reference`; do not edit by hand.",
        "",
        document["info"]["description"],
        "",
        "## Operations",
        "",
    ]
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                lines += _operation(method, path, item[method])
    lines += ["## Schemas", ""]
    for name, schema in sorted(document["components"]["schemas"].items()):
        lines += _schema(name, schema)
    return "\n".join(lines).rstrip() + "\n"


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", "", f"{op['summary']}."]
    if op.get("description"):
        lines += ["", op["description"]]
    lines += ["", f"Authentication: {_auth(op)}.", ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | required | description |", "|---|---|---|---|"]
        for p in params:
            required = "yes" if p.get("required") else "no"
            description = _cell(p.get("description", ""))
            lines.append(f"| `{p['name']}` | {p['in']} | {required} | {description} |")
        lines.append("")
    body = op.get("requestBody")
    if body:
        ref = body["content"]["application/json"]["schema"]
        required = "required" if body.get("required") else "optional"
        lines += [f"Body ({required}): {_schema_link(ref)}.", ""]
    lines += ["| status | answer |", "|---|---|"]
    for status, response in op["responses"].items():
        lines.append(f"| {status} | {_answer(response)} |")
    return [*lines, ""]


def _auth(op: dict[str, Any]) -> str:
    security = op.get("security")
    if not security:
        return "none"
    if "hookKey" in security[0]:
        return "the hook key in `X-Quotagate-Key`"
    return "`Authorization: Bearer <key>`"


def _answer(response: dict[str, Any]) -> str:
    content = response.get("content", {})
    for media_type, value in content.items():
        return f"{_cell(response['description'])}: `{media_type}` {_schema_link(value['schema'])}"
    return _cell(response["description"])


def _schema_link(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if ref is None:
        return f"`{schema.get('type', 'object')}`"
    name = ref.rsplit("/", 1)[1]
    return f"[{name}](#{name.lower()})"


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [_cell(schema["description"]), ""]
    properties = schema.get("properties", {})
    if not properties:
        return [*lines, f"`{_type(schema)}`", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | required |", "|---|---|---|"]
    for field, spec in properties.items():
        needed = "yes" if field in required else "no"
        lines.append(f"| `{field}` | {_cell(_type(spec))} | {needed} |")
    return [*lines, ""]


def _type(spec: dict[str, Any]) -> str:
    """A short human form of a JSON schema: ``integer 1..1000000000000``, ``A | null``."""
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[1]
    for combinator in ("anyOf", "oneOf"):
        if combinator in spec:
            return " | ".join(_type(s) for s in spec[combinator])
    if "enum" in spec:
        return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in spec["enum"])
    kind = spec.get("type", "any")
    if isinstance(kind, list):
        kind = " | ".join(kind)
    if kind == "array":
        return f"array of {_type(spec.get('items', {}))}"
    bounds = [
        f"{label} {spec[key]}"
        for key, label in (
            ("minimum", ">="),
            ("maximum", "<="),
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("pattern", "pattern"),
        )
        if key in spec
    ]
    return f"{kind} ({', '.join(bounds)})" if bounds else str(kind)


def _cell(text: str) -> str:
    """Text that is safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def reference(config: Config | None = None) -> str:
    """The reference for a config (the shipped default unless given)."""
    return render(openapi_document(config or load_config()))


if __name__ == "__main__":
    sys.stdout.write(reference())
