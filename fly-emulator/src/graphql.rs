//! GraphQL over Fly's published SDL: every document is validated against
//! the schema with apollo-compiler; root fields are resolved to plain JSON
//! (see `resolvers`) and that JSON is projected onto the operation's
//! selection set, so any valid query shape over the implemented fields
//! works: aliases, `__typename`, fragments, inline fragments, `@skip` and
//! `@include`, variables with defaults.

use std::sync::Arc;

use apollo_compiler::ast::{OperationType, Value as AstValue};
use apollo_compiler::executable::{Field, Selection, SelectionSet};
use apollo_compiler::response::{JsonMap, serde_json_bytes};
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Node, Schema};
use serde_json::{Map, Value, json};

/// Fly's SDL, the same bytes as in `/work/shared/fly-api` (see README).
pub const SCHEMA_SDL: &str = include_str!("../api/schema.graphql");

pub struct GraphqlSchema {
    pub schema: Valid<Schema>,
}

#[derive(Debug, thiserror::Error)]
#[error("Fly's GraphQL schema does not parse: {0}")]
pub struct SchemaError(String);

impl GraphqlSchema {
    pub fn load() -> Result<Self, SchemaError> {
        let schema = Schema::parse_and_validate(SCHEMA_SDL, "schema.graphql")
            .map_err(|e| SchemaError(e.errors.to_string()))?;
        Ok(Self { schema })
    }

    /// Validation errors of a document, as the messages Fly's error
    /// shape carries; `Ok` holds the validated document.
    pub fn validate(&self, query: &str) -> Result<Valid<ExecutableDocument>, Vec<String>> {
        ExecutableDocument::parse_and_validate(&self.schema, query, "request.graphql").map_err(
            |with_errors| {
                with_errors
                    .errors
                    .iter()
                    .map(|d| d.error.to_string())
                    .collect()
            },
        )
    }
}

/// A field error from a resolver: `errors[]` entry with `extensions.code`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub message: String,
    pub code: &'static str,
}

impl FieldError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }
}

pub fn error_entry(message: &str, code: &str, path: Option<&[Value]>) -> Value {
    let mut entry = json!({"message": message, "extensions": {"code": code}});
    if let (Some(path), Some(obj)) = (path, entry.as_object_mut()) {
        obj.insert("path".into(), Value::Array(path.to_vec()));
    }
    entry
}

/// A whole response body with no data: request errors (validation,
/// variables, authentication).
pub fn request_error_body(messages: &[String], code: &str) -> Value {
    json!({
        "data": null,
        "errors": messages.iter().map(|m| error_entry(m, code, None)).collect::<Vec<_>>(),
    })
}

/// Projected data in selection order (serde_json's map sorts keys, and
/// GraphQL answers fields in the order they were asked for).
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Leaf(Value),
    List(Vec<Out>),
    Object(Vec<(String, Out)>),
}

impl serde::Serialize for Out {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Out::Leaf(value) => value.serialize(serializer),
            Out::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Out::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

impl Out {
    /// The value of a response key of an object.
    pub fn get(&self, key: &str) -> Option<&Out> {
        match self {
            Out::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A GraphQL response: data in selection order, then errors.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Response {
    pub data: Out,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Value>,
}

/// Resolves root fields; implemented by `resolvers::Resolver`.
pub trait RootResolver {
    fn resolve(
        &mut self,
        operation: OperationType,
        field: &str,
        args: &Map<String, Value>,
    ) -> Result<Value, FieldError>;
}

pub struct Execution<'a> {
    schema: &'a Valid<Schema>,
    document: &'a Valid<ExecutableDocument>,
    variables: Map<String, Value>,
    errors: Vec<Value>,
}

/// Runs one request: picks the operation, coerces variables (defaults
/// included) and executes the root fields in order (serially, as
/// mutations require).
pub fn execute(
    schema: &GraphqlSchema,
    document: &Valid<ExecutableDocument>,
    operation_name: Option<&str>,
    variables: &Map<String, Value>,
    resolver: &mut dyn RootResolver,
) -> Response {
    let request_error = |message: String, code: &str| Response {
        data: Out::Leaf(Value::Null),
        errors: vec![error_entry(&message, code, None)],
    };
    let operation = match document.operations.get(operation_name) {
        Ok(op) => op,
        Err(e) => return request_error(e.message().to_string(), "GRAPHQL_VALIDATION_FAILED"),
    };
    let raw_variables: JsonMap = match serde_json_bytes::to_value(variables) {
        Ok(serde_json_bytes::Value::Object(map)) => map,
        _ => JsonMap::new(),
    };
    let coerced = match apollo_compiler::request::coerce_variable_values(
        &schema.schema,
        operation,
        &raw_variables,
    ) {
        Ok(v) => v,
        Err(e) => return request_error(e.message().to_string(), "BAD_USER_INPUT"),
    };
    let variables = match serde_json::to_value(coerced.into_inner()) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut execution = Execution {
        schema: &schema.schema,
        document,
        variables,
        errors: Vec::new(),
    };
    let data = execution.root(operation.operation_type, &operation.selection_set, resolver);
    Response {
        data,
        errors: execution.errors,
    }
}

impl Execution<'_> {
    fn root(
        &mut self,
        operation: OperationType,
        selection_set: &SelectionSet,
        resolver: &mut dyn RootResolver,
    ) -> Out {
        let type_name = selection_set.ty.to_string();
        self.fields(selection_set, &type_name, &[], |this, field| {
            let args = this.arguments(field);
            resolver.resolve(operation, field.name.as_str(), &args)
        })
    }

    /// The fields `selection_set` asks of an object of `type_name` at
    /// `path`: `__typename` answers itself, `value_of` gives every other
    /// field's value (projected in turn) or its error (then null).
    fn fields(
        &mut self,
        selection_set: &SelectionSet,
        type_name: &str,
        path: &[Value],
        mut value_of: impl FnMut(&mut Self, &Node<Field>) -> Result<Value, FieldError>,
    ) -> Out {
        let mut out = Vec::new();
        for (key, fields) in self.collect_fields(selection_set, type_name) {
            let Some(first) = fields.first() else {
                continue;
            };
            if first.name == "__typename" {
                out.push((key, Out::Leaf(Value::String(type_name.to_string()))));
                continue;
            }
            let mut field_path = path.to_vec();
            field_path.push(Value::String(key.clone()));
            match value_of(self, first) {
                Ok(value) => {
                    let merged = merged_selection_set(&fields);
                    let projected = self.project(&value, &merged, &field_path);
                    out.push((key, projected));
                }
                Err(error) => {
                    self.errors
                        .push(error_entry(&error.message, error.code, Some(&field_path)));
                    out.push((key, Out::Leaf(Value::Null)));
                }
            }
        }
        Out::Object(out)
    }

    /// The JSON a resolver gave, cut down to what the selection set asks
    /// for, with response keys (aliases) as names.
    fn project(&mut self, value: &Value, selection_set: &SelectionSet, path: &[Value]) -> Out {
        if selection_set.selections.is_empty() {
            return Out::Leaf(value.clone());
        }
        match value {
            Value::Array(items) => Out::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let mut item_path = path.to_vec();
                        item_path.push(json!(i));
                        self.project(item, selection_set, &item_path)
                    })
                    .collect(),
            ),
            Value::Object(object) => {
                let type_name = object
                    .get("__typename")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| selection_set.ty.to_string());
                self.fields(selection_set, &type_name, path, |_, field| {
                    object.get(field.name.as_str()).cloned().ok_or_else(|| {
                        FieldError::new(
                            "NOT_IMPLEMENTED",
                            format!(
                                "not implemented in the emulator: {type_name}.{}",
                                field.name
                            ),
                        )
                    })
                })
            }
            _ => Out::Leaf(Value::Null),
        }
    }

    /// CollectFields from the spec: response key → the fields selected
    /// under it, through fragments whose type condition the object meets.
    fn collect_fields(
        &self,
        selection_set: &SelectionSet,
        type_name: &str,
    ) -> Vec<(String, Vec<Node<Field>>)> {
        let mut grouped: Vec<(String, Vec<Node<Field>>)> = Vec::new();
        self.collect_into(selection_set, type_name, &mut grouped, &mut Vec::new());
        grouped
    }

    fn collect_into(
        &self,
        selection_set: &SelectionSet,
        type_name: &str,
        grouped: &mut Vec<(String, Vec<Node<Field>>)>,
        visited_fragments: &mut Vec<String>,
    ) {
        for selection in &selection_set.selections {
            if !self.included(selection) {
                continue;
            }
            match selection {
                Selection::Field(field) => {
                    let key = field.response_key().to_string();
                    match grouped.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, fields)) => fields.push(field.clone()),
                        None => grouped.push((key, vec![field.clone()])),
                    }
                }
                Selection::InlineFragment(fragment) => {
                    let applies = fragment
                        .type_condition
                        .as_ref()
                        .is_none_or(|cond| self.type_applies(cond.as_str(), type_name));
                    if applies {
                        self.collect_into(
                            &fragment.selection_set,
                            type_name,
                            grouped,
                            visited_fragments,
                        );
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.fragment_name.to_string();
                    if visited_fragments.contains(&name) {
                        continue;
                    }
                    visited_fragments.push(name);
                    if let Some(fragment) = self.document.fragments.get(&spread.fragment_name)
                        && self.type_applies(fragment.type_condition().as_str(), type_name)
                    {
                        self.collect_into(
                            &fragment.selection_set,
                            type_name,
                            grouped,
                            visited_fragments,
                        );
                    }
                }
            }
        }
    }

    fn type_applies(&self, condition: &str, type_name: &str) -> bool {
        condition == type_name || self.schema.is_subtype(condition, type_name)
    }

    /// `@skip(if:)` and `@include(if:)`.
    fn included(&self, selection: &Selection) -> bool {
        let directives = match selection {
            Selection::Field(f) => &f.directives,
            Selection::InlineFragment(f) => &f.directives,
            Selection::FragmentSpread(f) => &f.directives,
        };
        for directive in directives.iter() {
            let condition = directive
                .specified_argument_by_name("if")
                .map(|v| self.value_to_json(v))
                .and_then(|v| v.as_bool());
            match (directive.name.as_str(), condition) {
                ("skip", Some(true)) | ("include", Some(false)) => return false,
                _ => {}
            }
        }
        true
    }

    /// The field's arguments as JSON, variables substituted and the
    /// schema's argument defaults filled in.
    fn arguments(&self, field: &Field) -> Map<String, Value> {
        let mut args = Map::new();
        for definition in &field.definition.arguments {
            if let Some(default) = &definition.default_value {
                args.insert(definition.name.to_string(), self.value_to_json(default));
            }
        }
        for argument in &field.arguments {
            let value = self.value_to_json(&argument.value);
            // A variable that was not given and has no default counts as
            // absent, not null (GraphQL's CoerceArgumentValues).
            if let AstValue::Variable(name) = argument.value.as_ref()
                && !self.variables.contains_key(name.as_str())
            {
                continue;
            }
            args.insert(argument.name.to_string(), value);
        }
        args
    }

    fn value_to_json(&self, value: &AstValue) -> Value {
        match value {
            AstValue::Null => Value::Null,
            AstValue::Enum(name) => Value::String(name.to_string()),
            AstValue::Variable(name) => self
                .variables
                .get(name.as_str())
                .cloned()
                .unwrap_or(Value::Null),
            AstValue::String(s) => Value::String(s.clone()),
            AstValue::Float(f) => f
                .try_to_f64()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            AstValue::Int(i) => match i.try_to_i32() {
                Ok(n) => json!(n),
                Err(_) => i
                    .as_str()
                    .parse::<i64>()
                    .map(|n| json!(n))
                    .unwrap_or(Value::Null),
            },
            AstValue::Boolean(b) => Value::Bool(*b),
            AstValue::List(items) => {
                Value::Array(items.iter().map(|v| self.value_to_json(v)).collect())
            }
            AstValue::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(name, v)| (name.to_string(), self.value_to_json(v)))
                    .collect(),
            ),
        }
    }
}

/// The sub-selections of every field merged under one response key.
fn merged_selection_set(fields: &[Node<Field>]) -> SelectionSet {
    let mut iter = fields.iter();
    let Some(first) = iter.next() else {
        return SelectionSet {
            ty: apollo_compiler::name!("Queries"),
            selections: Vec::new(),
        };
    };
    let mut merged = first.selection_set.clone();
    for field in iter {
        merged
            .selections
            .extend(field.selection_set.selections.iter().cloned());
    }
    merged
}

/// Shared so the HTTP handler can hold it cheaply.
pub type SharedSchema = Arc<GraphqlSchema>;
