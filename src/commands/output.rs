//! The one output path of every command: a command builds an [`Output`] (its human text and
//! its JSON value, from the same data) and [`emit`] prints it as text, as JSON (`--json`) or
//! not at all (`--quiet`). Errors go through [`emit_error`]: `error: …` on stderr, and with
//! `--json` also one line of JSON on stdout, so a program that reads stdout always gets JSON.

use serde::Serialize;
use std::io::Write as _;
use std::process::ExitCode;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// For people (the default).
    Text,
    /// One JSON value on stdout (`--json`).
    Json,
    /// Nothing but errors and warnings; the exit status says how it went (`--quiet`).
    Quiet,
}

impl Format {
    pub fn from_flags(json: bool, quiet: bool) -> Format {
        match (json, quiet) {
            (true, _) => Format::Json,
            (false, true) => Format::Quiet,
            _ => Format::Text,
        }
    }
}

/// What a command has to say, once it is done.
#[derive(Debug)]
pub struct Output {
    pub text: String,
    /// One line of JSON.
    pub json: String,
    /// The process's exit status.
    pub code: u8,
    /// With `--json`, the text still goes to stderr (a run's summary, for the person
    /// watching while a program reads stdout).
    pub text_on_stderr_with_json: bool,
}

impl Output {
    /// A successful result: its text, and `value` as JSON.
    pub fn new(text: String, value: &impl Serialize) -> Output {
        Output {
            text,
            json: serde_json::to_string(value).expect("command results serialise"),
            code: 0,
            text_on_stderr_with_json: false,
        }
    }

    /// Nothing more to print (a command that printed as it went, such as `serve`).
    pub fn nothing(code: u8) -> Output {
        Output {
            text: String::new(),
            json: String::new(),
            code,
            text_on_stderr_with_json: false,
        }
    }

    pub fn with_code(mut self, code: u8) -> Output {
        self.code = code;
        self
    }
}

/// Prints `out` as `format` asks and gives its exit status.
pub fn emit(format: Format, out: &Output) -> ExitCode {
    // A closed stdout (`mvc plan | head`) is not an error worth a panic.
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Text => {
            let _ = stdout.write_all(out.text.as_bytes());
        }
        Format::Json => {
            if out.text_on_stderr_with_json {
                eprint!("{}", out.text);
            }
            if !out.json.is_empty() {
                let _ = writeln!(stdout, "{}", out.json);
            }
        }
        Format::Quiet => {}
    }
    let _ = stdout.flush();
    ExitCode::from(out.code)
}

/// An error as `--json` prints it: `{"error": {"message", "causes", "file", "line",
/// "column", "usage"}}`. `message` is the whole chain as the text shows it; `causes` the
/// chain one entry a link; `file`, `line` and `column` are set when the error is at a
/// position of a pipeline file; `usage` when the command line itself was wrong (exit 2).
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    pub message: String,
    pub causes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub usage: bool,
}

impl ErrorJson {
    fn of(error: &anyhow::Error) -> ErrorJson {
        let at = error
            .chain()
            .find_map(|e| e.downcast_ref::<crate::pipeline::PipelineError>());
        ErrorJson {
            message: format!("{error:#}"),
            causes: error.chain().map(|e| e.to_string()).collect(),
            file: at.map(|a| a.file.display().to_string()),
            line: at.and_then(|a| a.position).map(|(line, _)| line),
            column: at.and_then(|a| a.position).map(|(_, column)| column),
            usage: false,
        }
    }
}

/// Prints an error that ended a command: `error: …` on stderr, whatever the format, and with
/// `--json` also `{"error": …}` ([`ErrorJson`]) as one line on stdout. Exit status 1.
pub fn emit_error(format: Format, error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    if format == Format::Json {
        print_error_json(&ErrorJson::of(error));
    }
    ExitCode::from(1)
}

/// A command line that clap refused (exit status 2), printed as clap prints it, and with
/// `--json` also as one line of JSON on stdout. Help and `--version` are printed as they are.
pub fn emit_usage_error(json: bool, error: &clap::Error) -> ExitCode {
    let _ = error.print();
    // 0 for help and --version asked for; 2 for a wrong command line (clap's own codes).
    let code = u8::try_from(error.exit_code()).unwrap_or(2);
    if code == 0 {
        return ExitCode::SUCCESS;
    }
    if json {
        let text = error.render().to_string();
        let message = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_string();
        print_error_json(&ErrorJson {
            causes: vec![message.clone()],
            message,
            file: None,
            line: None,
            column: None,
            usage: true,
        });
    }
    ExitCode::from(code)
}

fn print_error_json(error: &ErrorJson) {
    let line = serde_json::json!({ "error": error });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Where the lines for people of a worker or the Slurm launcher go: stderr, or nowhere with
/// `--quiet` (they are progress, not the result).
pub fn say(format: Format) -> crate::remote::Say {
    match format {
        Format::Quiet => crate::remote::Say(std::sync::Arc::new(|_: &str| {})),
        _ => crate::remote::Say(std::sync::Arc::new(|line: &str| eprintln!("{line}"))),
    }
}
