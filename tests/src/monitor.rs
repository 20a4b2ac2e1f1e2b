//! The outer QEMU's QMP monitor: commands the harness sends when L1's console prints a
//! marker (e.g. `device_del` of an NVMe while a nested guest reads it, as an unplug would).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A QMP command to send once a console line contains `marker` (once per run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorAction {
    /// Text on L1's console that triggers it.
    pub marker: String,
    /// The QMP command, a JSON object (`{"execute":"device_del","arguments":{"id":"x"}}`).
    pub command: String,
}

impl MonitorAction {
    /// `device_del` of the QEMU device `id` once the console shows `marker`.
    pub fn device_del(marker: impl Into<String>, id: &str) -> Self {
        Self {
            marker: marker.into(),
            command: format!(r#"{{"execute":"device_del","arguments":{{"id":"{id}"}}}}"#),
        }
    }

    /// The QMP command `command` (a JSON object) once the console shows `marker`.
    pub fn qmp(marker: impl Into<String>, command: impl Into<String>) -> Self {
        Self { marker: marker.into(), command: command.into() }
    }
}

/// Sends `command` through the QMP socket at `socket`; QEMU's answer (one JSON line).
pub(crate) fn send(socket: &Path, command: &str) -> std::io::Result<String> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // The greeting, then capabilities negotiation, then the command.
    reader.read_line(&mut line)?;
    let mut answer = |writer: &mut UnixStream, text: &str| -> std::io::Result<String> {
        writer.write_all(text.as_bytes())?;
        writer.write_all(b"\n")?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            // Events (`{"event": ...}`) can come before the answer.
            if line.contains("\"return\"") || line.contains("\"error\"") {
                return Ok(line.trim().to_string());
            }
        }
    };
    answer(&mut writer, r#"{"execute":"qmp_capabilities"}"#)?;
    answer(&mut writer, command)
}
