//! The one output path of every command: a command builds an [`Output`] (its human text and
//! its JSON value, from the same data) and [`emit`] prints it as text, as JSON (`--json`) or
//! not at all (`--quiet`). Errors are not output: `main` prints them to stderr.

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
