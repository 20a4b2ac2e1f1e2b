//! Driver bring-up trace: what the guest did to a device and what the VMM did about it
//! (configuration writes, trapped BAR accesses, MSI-X programming, resets, DMA and BAR
//! mappings), as timestamped records for people (text) and scripts (JSON lines).
//!
//! Devices emit [`TraceRecord`]s into a [`TraceSink`]; [`TraceWriter`] formats them. No OS
//! calls here: the writer takes any `Write` and a clock.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// A field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceValue<'a> {
    /// A number shown in hex (addresses, register values).
    Hex(u64),
    /// A count or index.
    Int(u64),
    /// Text.
    Str(&'a str),
    /// A flag.
    Bool(bool),
}

/// One traced event.
#[derive(Debug, Clone, Copy)]
pub struct TraceRecord<'a> {
    /// Who: the function or subsystem ("0000:01:00.0", "virtio-blk0", "dma").
    pub source: &'a str,
    /// What: "cfg-write", "bar-read", "msix-vector", "reset", "dma-map", ...
    pub event: &'a str,
    /// Details, in order.
    pub fields: &'a [(&'a str, TraceValue<'a>)],
}

/// Where trace records go.
pub trait TraceSink: Send + Sync + std::fmt::Debug {
    /// Records one event.
    fn record(&self, record: &TraceRecord<'_>);
}

/// How a [`TraceWriter`] formats records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// `  12.345678 source          event      key=value ...`
    Text,
    /// One JSON object per line: `{"t":12.345678,"source":...,"event":...,"key":value}`.
    JsonLines,
}

/// Formats trace records into a writer, with seconds since the writer was made.
pub struct TraceWriter {
    format: TraceFormat,
    start: Instant,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter").field("format", &self.format).finish()
    }
}

/// Appends `text` to `out` as a quoted, escaped JSON string.
pub fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats `record` at `seconds` as one line (without the newline).
pub fn format_record(format: TraceFormat, seconds: f64, record: &TraceRecord<'_>) -> String {
    let mut line = String::new();
    match format {
        TraceFormat::Text => {
            let _ = write!(line, "{seconds:12.6} {:<14} {:<11}", record.source, record.event);
            for (key, value) in record.fields {
                let _ = match value {
                    TraceValue::Hex(v) => write!(line, " {key}={v:#x}"),
                    TraceValue::Int(v) => write!(line, " {key}={v}"),
                    TraceValue::Str(v) => write!(line, " {key}={v}"),
                    TraceValue::Bool(v) => write!(line, " {key}={v}"),
                };
            }
        }
        TraceFormat::JsonLines => {
            let _ = write!(line, "{{\"t\":{seconds:.6},\"source\":");
            json_string(&mut line, record.source);
            line.push_str(",\"event\":");
            json_string(&mut line, record.event);
            for (key, value) in record.fields {
                line.push(',');
                json_string(&mut line, key);
                line.push(':');
                match value {
                    // Scripts get exact numbers; hex is for people.
                    TraceValue::Hex(v) | TraceValue::Int(v) => {
                        let _ = write!(line, "{v}");
                    }
                    TraceValue::Str(v) => json_string(&mut line, v),
                    TraceValue::Bool(v) => {
                        let _ = write!(line, "{v}");
                    }
                }
            }
            line.push('}');
        }
    }
    line
}

impl TraceWriter {
    /// A writer into `out`.
    pub fn new(format: TraceFormat, out: Box<dyn Write + Send>) -> Self {
        Self { format, start: Instant::now(), out: Mutex::new(out) }
    }
}

impl TraceSink for TraceWriter {
    fn record(&self, record: &TraceRecord<'_>) {
        let line = format_record(self.format, self.start.elapsed().as_secs_f64(), record);
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A trace that cannot be written must not stop the VM.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TraceRecord<'static> {
        TraceRecord {
            source: "0000:01:00.0",
            event: "msix-vector",
            fields: &[
                ("vector", TraceValue::Int(3)),
                ("address", TraceValue::Hex(0x808_0040)),
                ("name", TraceValue::Str("a\"b\\c\n")),
                ("masked", TraceValue::Bool(false)),
            ],
        }
    }

    #[test]
    fn text_lines_are_aligned_key_values() {
        let line = format_record(TraceFormat::Text, 1.5, &record());
        assert_eq!(
            line,
            "    1.500000 0000:01:00.0   msix-vector vector=3 address=0x8080040 name=a\"b\\c\n \
             masked=false"
        );
    }

    #[test]
    fn json_lines_escape_and_keep_numbers_exact() {
        let line = format_record(TraceFormat::JsonLines, 1.5, &record());
        assert_eq!(
            line,
            r#"{"t":1.500000,"source":"0000:01:00.0","event":"msix-vector","vector":3,"address":134742080,"name":"a\"b\\c\n","masked":false}"#
        );
    }

    #[test]
    fn writer_appends_one_line_per_record() {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let shared = Shared::default();
        let writer = TraceWriter::new(TraceFormat::JsonLines, Box::new(shared.clone()));
        writer.record(&record());
        writer.record(&record());
        let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.starts_with("{\"t\":") && l.ends_with('}')));
    }
}
