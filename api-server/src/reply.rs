//! Answers in the API server's own shape: a `meta/v1` `Status` that kubectl and virtctl
//! print as they print kube-apiserver's errors.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

/// An answer: HTTP status, `Status.reason` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub code: StatusCode,
    /// `Status.reason` (`NotFound`, `Conflict`, `Forbidden`, ...); empty on success.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Reply {
    /// 202: the request was accepted and the cluster will act on it.
    pub fn accepted(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::ACCEPTED,
            reason: "",
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 405.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    /// 409: the object's state does not allow it.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::CONFLICT, "Conflict", message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            message,
        )
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// 502: something behind the api-server refused (a guest port nothing listens on).
    /// Not retried by clients, unlike 503.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::BAD_GATEWAY, "BadGateway", message)
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    fn failure(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let success = self.code.is_success();
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": if success { "Success" } else { "Failure" },
            "message": self.message,
            "code": self.code.as_u16(),
        });
        if !self.reason.is_empty() {
            status["reason"] = json!(self.reason);
        }
        status
    }

    /// As an HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        json_response(self.code, &self.status())
    }
}

/// A JSON body with `code`.
pub fn json_response(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_status_objects_with_a_reason() {
        let status = Reply::conflict("VirtualMachine default/small is not running").status();
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(status["code"], 409);
        let status = Reply::accepted("starting").status();
        assert_eq!(status["status"], "Success");
        assert!(status.get("reason").is_none());
    }
}
