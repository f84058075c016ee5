//! Logging set-up: human-readable by default, JSON for log pipelines.
//!
//! Text logs are coloured only when stdout is a terminal (and `NO_COLOR` is
//! unset): a log file or a pipe gets plain text, no ANSI escapes. JSON logs
//! are one object per line with the event's fields and those of every span
//! it is in flattened in, so each line written during a reconcile carries
//! the object's `kind`, `name` and `namespace`, the reconcile's `trace_id`
//! and `span_id`, and the line that ends it its `reason` (see
//! [`reconcile_span`]).

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Span, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, fmt as tfmt, prelude::*};

/// Log output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. `level` is an EnvFilter directive such as
/// `info` or `bulkhead=debug,kube=info`. Calling it twice is harmless.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tfmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tfmt::layer().with_ansi(colour(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            )))
            .try_init(),
    };
}

/// Colour for a terminal, unless `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>). The fmt layer writes to stdout.
fn colour(stdout_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The span every reconcile runs in. Its fields end up on every JSON line
/// logged inside it; `trace_id` is random per reconcile, so one reconcile's
/// lines can be found among concurrent ones (span ids are reused).
/// `reason` is filled in by [`reconcile_finished`].
pub fn reconcile_span(kind: &str, name: &str, namespace: Option<&str>) -> Span {
    tracing::info_span!(
        "reconcile",
        kind,
        name,
        namespace = namespace.unwrap_or(""),
        trace_id = %format!("{:032x}", rand::random::<u128>()),
        reason = tracing::field::Empty,
    )
}

/// Records how a reconcile ended on its span and logs one line with it:
/// debug on success (a resync reconciles everything), info on failure
/// (the Warning with the message is logged once per new failure by
/// `reconcile::events`; this line is there for every attempt).
pub fn reconcile_finished(span: &Span, reason: &str, failed: bool) {
    span.record("reason", reason);
    let _entered = span.enter();
    if failed {
        tracing::info!(reason, "reconcile ended in error");
    } else {
        tracing::debug!(reason, "reconcile ended");
    }
}

/// One JSON object per event: timestamp, level, target, the fields of the
/// spans it is in (outermost first, so inner spans win), the innermost
/// span's id, then the event's own fields.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                // JsonFields stores a span's fields as a JSON object.
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str())
                {
                    line.extend(fields);
                }
                line.insert(
                    "span_id".into(),
                    format!("{:016x}", span.id().into_u64()).into(),
                );
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or pipe gets no escapes");
        assert!(!colour(true, Some("1".as_ref())));
        assert!(colour(true, Some("".as_ref())), "empty NO_COLOR is unset");
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_reconciles_object_trace_and_reason() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tfmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, "outside");
            let span = reconcile_span("DatabaseCluster", "my-app-db", Some("staging"));
            span.in_scope(|| tracing::warn!(object = "x", "inside"));
            reconcile_finished(&span, "CredentialsUnavailable", true);
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["answer"], 42);
        assert!(lines[0].get("trace_id").is_none(), "no span, no trace");
        for line in &lines[1..] {
            assert_eq!(line["kind"], "DatabaseCluster", "{line}");
            assert_eq!(line["name"], "my-app-db", "{line}");
            assert_eq!(line["namespace"], "staging", "{line}");
            assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");
            assert!(line["span_id"].is_string(), "{line}");
        }
        assert_eq!(lines[1]["trace_id"], lines[2]["trace_id"]);
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[2]["reason"], "CredentialsUnavailable");
        assert_eq!(lines[2]["message"], "reconcile ended in error");
        assert!(!text.contains('\u{1b}'), "no ANSI escapes in JSON");
    }
}
