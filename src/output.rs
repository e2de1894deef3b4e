//! Results on stdout (human text or exactly one JSON document), errors and
//! hints on stderr, and the logging setup with secrets redacted.

use std::io::Write;

use serde_json::{json, Value};

use crate::error::Error;
use crate::redact;

/// What stdout holds: text for people, or one JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

/// What a command produced: a machine-readable report, its human rendering,
/// and the error that ended it, if any (a report can be partial).
#[derive(Debug)]

pub struct Outcome {
    pub report: Value,
    pub human: String,
    pub error: Option<Error>,
}

impl Outcome {
    pub fn ok(report: Value, human: String) -> Self {
        Outcome {
            report,
            human,
            error: None,
        }
    }

    pub fn failed(error: Error) -> Self {
        Outcome {
            report: Value::Null,
            human: String::new(),
            error: Some(error),
        }
    }

    pub fn with_error(mut self, error: Option<Error>) -> Self {
        self.error = error;
        self
    }

    pub fn exit_code(&self) -> u8 {
        self.error.as_ref().map(Error::exit_code).unwrap_or(0)
    }
}

pub fn error_json(e: &Error) -> Value {
    json!({
        "kind": e.kind(),
        "exit_code": e.exit_code(),
        "message": redact::redact(&e.full_message()),
        "hint": e.hint().map(|h| redact::redact(&h)),
    })
}

/// Prints the outcome and returns the exit code.
pub fn emit(outcome: &Outcome, format: OutputFormat) -> u8 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        OutputFormat::Json => {
            let mut doc = match &outcome.report {
                Value::Object(m) => Value::Object(m.clone()),
                Value::Null => json!({}),
                other => json!({ "result": other }),
            };
            if let (Some(e), Value::Object(m)) = (&outcome.error, &mut doc) {
                m.insert("error".into(), error_json(e));
            }
            let text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
            let _ = writeln!(out, "{}", redact::redact(&text));
        }
        OutputFormat::Human => {
            if !outcome.human.is_empty() {
                let _ = write!(out, "{}", redact::redact(&outcome.human));
                if !outcome.human.ends_with('\n') {
                    let _ = writeln!(out);
                }
            }
        }
    }
    let _ = out.flush();
    if let Some(e) = &outcome.error {
        print_error(e);
    }
    outcome.exit_code()
}

/// A command line clap refused: `--help` and `--version` print as usual;
/// an error is exit 2, and with `--output json` it is one JSON document on
/// stdout like every other error.
pub fn argument_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        || !json_requested(std::env::args())
    {
        e.exit();
    }
    let text = e.render().to_string();
    let message = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let error = Error::usage_hint(message, "see `valero-db --help`");
    let outcome = Outcome::failed(error);
    std::process::ExitCode::from(emit(&outcome, OutputFormat::Json))
}

/// Whether the raw arguments ask for JSON output.
fn json_requested(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().any(|a| a == "--output=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--output" && w[1] == "json")
}

pub fn print_error(e: &Error) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {}", redact::redact(&e.to_string()));
    for cause in e.causes() {
        let _ = writeln!(err, "  caused by: {}", redact::redact(&cause));
    }
    if let Some(hint) = e.hint() {
        let _ = writeln!(err, "  hint: {}", redact::redact(&hint));
    }
}

/// A stderr writer that removes secrets from every log line.
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logs go to stderr; `VALERO_DB_LOG` (an env-filter) overrides -v/-q.
/// `--log-format json` writes one JSON object per event (level, target,
/// message, the event's fields and those of the spans it is in:
/// environment and command, service, deployment), secrets masked as in
/// text.
pub fn init_logging(verbose: u8, quiet: bool, format: crate::cli::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "valero_db=info,warn",
        (false, 1) => "valero_db=debug,info",
        (false, _) => "trace",
    };
    let filter = std::env::var("VALERO_DB_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    if format == crate::cli::LogFormat::Json {
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(|| RedactingStderr)
            .with_target(true)
            .try_init();
        return;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingStderr)
        .with_ansi(ansi)
        .with_target(verbose > 0)
        .without_time()
        .try_init();
}

/// A plain text table with aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}
