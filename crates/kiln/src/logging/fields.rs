//! The fields of a text log line, written as tracing-subscriber's
//! `DefaultFields` writes them (`name=value`, strings quoted) but without
//! its styling calls when colours are off: they cost about 600
//! instructions a field even when they style nothing, and an access line
//! has seven (`kiln-bench instructions`). With colours on, and for anything
//! but integers, plain strings and `Debug` values (the message, errors, raw
//! identifiers), `DefaultFields` writes the field itself.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// kiln's `FormatFields` for text lines.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Fields;

impl<'a> MakeVisitor<Writer<'a>> for Fields {
    type Visitor = Visitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> Visitor<'a> {
        Visitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one line's fields, separated by spaces.
pub(super) struct Visitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Whether this visitor writes `field` itself; otherwise
    /// [`Visitor::delegate`] does. `log.*` fields are the `log` crate's
    /// metadata, which the line already shows: neither writes them.
    fn writes(&self, field: &Field) -> bool {
        let name = field.name();
        !self.writer.has_ansi_escapes() && name != "message" && !name.starts_with("r#")
    }

    fn skipped(field: &Field) -> bool {
        field.name().starts_with("log.")
    }

    fn pad(&mut self) {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.result = self.writer.write_str(" ");
        }
    }

    /// Writes `field` as `DefaultFields` would.
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        self.pad();
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), true);
        record(&mut inner);
        self.result = self.result.and(inner.finish());
    }

    /// Writes `field` as `name=shown` (`shown` being what `DefaultFields`
    /// shows of its value), or has `DefaultFields` write it with `default`.
    fn record_shown(
        &mut self,
        field: &Field,
        shown: fmt::Arguments<'_>,
        default: impl FnOnce(&mut DefaultVisitor<'_>),
    ) {
        if self.result.is_err() || Self::skipped(field) {
            return;
        }
        if !self.writes(field) {
            return self.delegate(default);
        }
        self.name(field);
        self.result = self.result.and_then(|()| self.writer.write_fmt(shown));
    }

    fn name(&mut self, field: &Field) {
        self.pad();
        self.result = self
            .result
            .and_then(|()| self.writer.write_str(field.name()))
            .and_then(|()| self.writer.write_str("="));
    }
}

impl Visit for Visitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_shown(field, format_args!("{value}"), |v| {
            v.record_u64(field, value)
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_shown(field, format_args!("{value}"), |v| {
            v.record_i64(field, value)
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() || Self::skipped(field) {
            return;
        }
        // Quoted as is when `Debug` would not escape anything in it.
        let plain = value
            .bytes()
            .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'));
        if !plain || !self.writes(field) {
            return self.delegate(|v| v.record_str(field, value));
        }
        self.name(field);
        self.result = self.result.and_then(|()| {
            self.writer.write_str("\"")?;
            self.writer.write_str(value)?;
            self.writer.write_str("\"")
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() || Self::skipped(field) {
            return;
        }
        self.delegate(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_shown(field, format_args!("{value:?}"), |v| {
            v.record_debug(field, value);
        });
    }
}

impl VisitOutput<fmt::Result> for Visitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for Visitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// Every kind of field, in a span and an event.
    fn emit() {
        let error = io::Error::other("disk \"full\"");
        let span = tracing::info_span!("reload", trigger = "api", r#type = 3);
        let _entered = span.enter();
        tracing::info!(
            method = %"GET",
            route = "/notes/{id}",
            odd = "tab\there \"quoted\" caf\u{e9}",
            status = 200u64,
            delta = -4i64,
            duration_ms = 0.916,
            ok = true,
            r#type = "raw",
            error = &error as &(dyn std::error::Error + 'static),
            list = ?[1, 2],
            "Request {} done",
            7
        );
        tracing::warn!(empty = "", "Only a message with \u{1b}[31m an escape");
    }

    fn lines(
        ansi: bool,
        fields: impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    ) -> String {
        let out = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(ansi)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_are_the_same_as_default_fields_writes() {
        for ansi in [false, true] {
            let ours = lines(ansi, Fields);
            assert_eq!(ours, lines(ansi, DefaultFields::new()), "ansi: {ansi}");
            assert!(ansi || ours.contains(r#" route="/notes/{id}" "#), "{ours}");
        }
    }
}
