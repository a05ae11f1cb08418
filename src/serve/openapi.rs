//! `GET /openapi.json`: the API described in OpenAPI 3.1 (the limits filled in from the flags).

use super::options::OPTION_NAMES;
use super::state::ServeConfig;
use serde_json::{json, Value};

fn error_response(what: &str) -> Value {
    json!({
        "description": what,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn option_parameters() -> Vec<Value> {
    let doc = |name: &str| match name {
        "boxes" => "Face boxes x1,y1,x2,y2 in pixels, separated by ';' (then no detector runs).",
        "flip_test" => "Average with the horizontally flipped crop (true/false).",
        "decode" => "Sub-pixel refinement: quarter (the reference) or dark.",
        "min_face" => "The detector's smallest face, in pixels (>= 1).",
        "detector" => "Without boxes: mtcnn (every face) or none (the whole image is the face).",
        _ => "",
    };
    OPTION_NAMES
        .iter()
        .map(|n| json!({ "name": n, "in": "query", "required": false, "schema": { "type": "string" }, "description": doc(n) }))
        .collect()
}

/// The document.
pub fn document(config: &ServeConfig) -> Value {
    let limits = &config.limits;
    let security = if config.api_key.is_some() { json!([{ "bearer": [] }]) } else { json!([]) };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hrk serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "HRNetV2 facial landmarks. Limits: body {} bytes, {} pixels, {} requests in progress, {} s per request.",
                limits.max_body, limits.max_pixels, limits.queue, limits.timeout.as_secs_f64()
            ),
        },
        "security": security,
        "paths": {
            "/v1/landmarks": {
                "post": {
                    "summary": "Faces with their landmarks in one image (the JSON of `hrk predict`).",
                    "parameters": option_parameters(),
                    "requestBody": {
                        "required": true,
                        "content": {
                            "image/*": { "schema": { "type": "string", "format": "binary" } },
                            "application/octet-stream": { "schema": { "type": "string", "format": "binary" } },
                            "multipart/form-data": { "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {
                                    "image": { "type": "string", "format": "binary" },
                                    "options": { "type": "string", "description": "A JSON object of the options (the query parameters' names)." },
                                },
                            } },
                        },
                    },
                    "responses": {
                        "200": { "description": "The faces.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Image" } } } },
                        "400": error_response("Bad options, a corrupt image, or an image too small for a face."),
                        "401": error_response("Missing or wrong API key."),
                        "413": error_response("Body or image over the limits."),
                        "415": error_response("Not an image type the server reads."),
                        "503": error_response("Busy (queue full) or still loading; see Retry-After."),
                        "504": error_response("The request ran past its time limit."),
                    },
                },
            },
            "/healthz": { "get": { "summary": "Liveness.", "security": [], "responses": { "200": { "description": "Alive." } } } },
            "/readyz": { "get": { "summary": "Readiness: the model is loaded.", "security": [], "responses": {
                "200": { "description": "Ready." }, "503": error_response("Still loading.") } } },
            "/metrics": { "get": { "summary": "Prometheus text format.", "responses": { "200": { "description": "Metrics.", "content": { "text/plain": {} } } } } },
            "/openapi.json": { "get": { "summary": "This document.", "responses": { "200": { "description": "OpenAPI 3.1." } } } },
            "/": { "get": { "summary": "The browser page (photo upload, camera live mode).", "security": [], "responses": {
                "200": { "description": "The page.", "content": { "text/html": {} } } } } },
            "/v1/live": { "get": {
                "summary": "The live mode's WebSocket: the first text message is {\"key\": …, \"fps\": …}; then each binary message (one image) gets one JSON answer, the per-image JSON with \"frame\" and tracked face \"id\"s (README).",
                "security": [], "responses": { "101": { "description": "Switching to the WebSocket protocol." } } } },
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Image": {
                    "type": "object",
                    "required": ["image", "width", "height", "faces"],
                    "properties": {
                        "image": { "type": "string", "description": "The upload's file name, or \"upload\"." },
                        "width": { "type": "integer" },
                        "height": { "type": "integer" },
                        "faces": { "type": "array", "items": { "$ref": "#/components/schemas/Face" } },
                    },
                },
                "Face": {
                    "type": "object",
                    "properties": {
                        "box": { "type": "array", "items": { "type": "number" }, "minItems": 4, "maxItems": 4 },
                        "score": { "type": ["number", "null"], "description": "Detector score (null for given boxes and the whole image)." },
                        "landmarks": { "type": "array", "items": { "type": "array", "items": { "type": "number" } } },
                        "landmark_scores": { "type": "array", "items": { "type": "number" } },
                        "pose": { "type": ["object", "null"], "properties": {
                            "yaw": { "type": "number" }, "pitch": { "type": "number" }, "roll": { "type": "number" } } },
                    },
                },
            },
        },
    })
}
