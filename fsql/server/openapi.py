"""The OpenAPI document of the server, written once: requests are checked by hand on the hot path
(no per-request model building), so the spec is not generated from models either."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {str(code): _ERROR for code in (400, 401, 404, 413, 503)}
_ENTITIES = {
    "type": "object",
    "description": "One list of values per entity key column, e.g. {\"customer_id\": [1, 2]}",
    "additionalProperties": {"type": "array", "items": {}},
}


def _post(summary: str, request: dict[str, Any], response: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"post": {"summary": summary, **extra,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                     "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": response}}},
                                   **_ERRORS}}}


def _get(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "OK"}, "503": _ERROR}}}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "fsql feature server", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        "schemas": {"Error": {"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string"}, "message": {"type": "string"}, "hint": {"type": ["string", "null"]}}}},
    },
    "security": [{"bearer": []}, {"apiKey": []}, {}],
    "paths": {
        "/v1/features": _post(
            "Online feature values with a status each (present, missing, stale, not_materialized)",
            {"type": "object", "required": ["entities"], "properties": {
                "features": {"type": "array", "items": {"type": "string"}, "description": "view.feature or view.*"},
                "training_set": {"type": "string"}, "entities": _ENTITIES}},
            {"type": "object", "properties": {"count": {"type": "integer"}, "columns": {
                "type": "object", "description": "entity keys, then per feature its values and <feature>__status",
                "additionalProperties": {"type": "array"}}}},
        ),
        "/v1/models/{name}/predict": _post(
            "Predictions of a model from its training set's online features (micro-batched)",
            {"type": "object", "required": ["entities"], "properties": {"entities": _ENTITIES, "request_fields": {
                "type": "object", "description": "The model's request-time fields (GET /v1/models), one value per entity",
                "additionalProperties": {"type": "array", "items": {}}}}},
            {"type": "object", "properties": {
                "model": {"type": "string"}, "predictions": {"type": "array", "items": {"type": "number"}},
                "features": {"type": "object"}, "statuses": {"type": "object"}, "request_fields": {"type": "object"}}},
            parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        ),
        "/v1/models": _get("The models served, their inputs and entity keys"),
        "/healthz": _get("The process is up"),
        "/readyz": _get("A serving plan is loaded and the online store answers"),
        "/metrics": _get("Prometheus metrics"),
    },
}
