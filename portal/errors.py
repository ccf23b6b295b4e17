"""Typed errors the services raise; the web and API layers map them to responses."""

from __future__ import annotations


class ServiceError(Exception):
    code = "error"
    http_status = 400

    def __init__(self, message: str, *, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class NotFound(ServiceError):
    code = "not_found"
    http_status = 404


class PermissionDenied(ServiceError):
    code = "forbidden"
    http_status = 403


class ValidationFailed(ServiceError):
    code = "validation_failed"
    http_status = 422

    @classmethod
    def field(cls, name: str, problem: str) -> ValidationFailed:
        return cls(f"{name} {problem}", fields={name: problem})


class Conflict(ServiceError):
    code = "conflict"
    http_status = 409


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class InvalidTransition(Conflict):
    code = "invalid_transition"
