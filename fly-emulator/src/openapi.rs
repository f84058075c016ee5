//! Fly's Machines OpenAPI 3.0.1 document as the REST contract: requests
//! are routed by its path templates, bodies are validated against the
//! operation's request schema, and every JSON answer is checked against
//! the response schema for its status (a mismatch is an emulator bug and
//! answers 500, so tests notice).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

pub const OPENAPI_JSON: &str = include_str!("../api/machines-openapi.json");

#[derive(Debug, Clone)]
pub struct Operation {
    pub operation_id: String,
    pub method: String,
    pub template: Vec<String>,
    pub request_schema: Option<Value>,
    pub request_required: bool,
    /// Status code → response body schema (only JSON ones).
    pub responses: HashMap<String, Value>,
}

pub struct OpenApi {
    pub operations: Vec<Operation>,
    /// `#/components` with OpenAPI's `nullable` turned into JSON Schema.
    components: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("machines-openapi.json does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("machines-openapi.json: {0}")]
    Shape(String),
}

pub enum RouteMatch<'a> {
    Found(&'a Operation, HashMap<String, String>),
    MethodNotAllowed,
    NotFound,
}

/// OpenAPI 3.0's `nullable: true` has no JSON Schema meaning; rewrite it
/// to a type union with `null` everywhere in the tree.
fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            if obj.remove("nullable") == Some(Value::Bool(true)) {
                match obj.get("type").cloned() {
                    Some(Value::String(t)) => {
                        obj.insert("type".into(), json!([t, "null"]));
                    }
                    _ => {
                        let inner = Value::Object(std::mem::take(obj));
                        obj.insert("anyOf".into(), json!([inner, {"type": "null"}]));
                    }
                }
            }
            for child in obj.values_mut() {
                rewrite_nullable(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

fn json_schema_of(content: &Value) -> Option<Value> {
    content
        .get("content")
        .and_then(|c| c.get("application/json"))
        .and_then(|c| c.get("schema"))
        .cloned()
}

impl OpenApi {
    pub fn load() -> Result<Self, SpecError> {
        let mut doc: Value = serde_json::from_str(OPENAPI_JSON)?;
        rewrite_nullable(&mut doc);
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| SpecError::Shape("no paths".into()))?;
        let mut operations = Vec::new();
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    continue;
                }
                let operation_id = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .unwrap_or(path)
                    .to_string();
                let request_body = op.get("requestBody");
                let responses = op
                    .get("responses")
                    .and_then(Value::as_object)
                    .map(|r| {
                        r.iter()
                            .filter_map(|(status, resp)| {
                                json_schema_of(resp).map(|s| (status.clone(), s))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                operations.push(Operation {
                    operation_id,
                    method: method.to_uppercase(),
                    template: path
                        .trim_matches('/')
                        .split('/')
                        .map(str::to_string)
                        .collect(),
                    request_schema: request_body.and_then(json_schema_of),
                    request_required: request_body
                        .and_then(|b| b.get("required"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    responses,
                });
            }
        }
        // Literal segments win over parameters (`/machines/{id}/lease`
        // against a longer parameter path): fewer parameters first.
        operations.sort_by_key(|op| op.template.iter().filter(|s| s.starts_with('{')).count());
        let components = doc.get("components").cloned().unwrap_or(json!({}));
        Ok(Self {
            operations,
            components,
            validators: Mutex::new(HashMap::new()),
        })
    }

    pub fn route(&self, method: &str, path: &str) -> RouteMatch<'_> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut path_matched = false;
        for op in &self.operations {
            if op.template.len() != segments.len() {
                continue;
            }
            let mut params = HashMap::new();
            let fits = op.template.iter().zip(&segments).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    if s.is_empty() {
                        return false;
                    }
                    params.insert(
                        t.trim_matches(|c| c == '{' || c == '}').to_string(),
                        s.to_string(),
                    );
                    true
                } else {
                    t == s
                }
            });
            if !fits {
                continue;
            }
            path_matched = true;
            if op.method == method {
                return RouteMatch::Found(op, params);
            }
        }
        if path_matched {
            RouteMatch::MethodNotAllowed
        } else {
            RouteMatch::NotFound
        }
    }

    fn validator(&self, key: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self
            .validators
            .lock()
            .map_err(|_| "validator cache poisoned".to_string())?;
        if let Some(v) = cache.get(key) {
            return Ok(v.clone());
        }
        // `$ref`s point at `#/components/schemas/…`: carry the components
        // in the root document so they resolve without any retrieval.
        let root = json!({"allOf": [schema], "components": self.components});
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .build(&root)
            .map_err(|e| format!("schema for {key} does not compile: {e}"))?;
        let validator = Arc::new(validator);
        cache.insert(key.to_string(), validator.clone());
        Ok(validator)
    }

    /// Problems of `instance` against `schema`, worded as
    /// `"/path: message"`; empty when it fits.
    pub fn check(
        &self,
        key: &str,
        schema: &Value,
        instance: &Value,
    ) -> Result<Vec<String>, String> {
        let validator = self.validator(key, schema)?;
        Ok(validator
            .iter_errors(instance)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() {
                    "body".to_string()
                } else {
                    format!("body{at}")
                };
                format!("{at}: {e}")
            })
            .collect())
    }

    pub fn check_request(&self, op: &Operation, body: &Value) -> Result<Vec<String>, String> {
        match &op.request_schema {
            Some(schema) => self.check(&format!("{} request", op.operation_id), schema, body),
            None => Ok(Vec::new()),
        }
    }

    pub fn check_response(
        &self,
        op: &Operation,
        status: u16,
        body: &Value,
    ) -> Result<Vec<String>, String> {
        let status = status.to_string();
        match op.responses.get(&status) {
            Some(schema) => self.check(
                &format!("{} response {status}", op.operation_id),
                schema,
                body,
            ),
            None => Ok(Vec::new()),
        }
    }
}

/// Query string as a map (last value wins), percent-decoded.
pub fn parse_query(query: Option<&str>) -> Map<String, Value> {
    let mut map = Map::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(percent_decode(k), Value::String(percent_decode(v)));
    }
    map
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
