//! The shared secret between a coordinator and its workers.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// The environment variable a token may come from instead of a file.
pub const TOKEN_ENV: &str = "MVC_TOKEN";

/// A bearer token. Kept as its blake3 hash for comparison: `blake3::Hash`'s equality is
/// constant-time, so a wrong guess learns nothing from how long the refusal took.
#[derive(Clone)]
pub struct Token {
    secret: String,
    hash: blake3::Hash,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    pub fn new(secret: &str) -> Result<Token> {
        let secret = secret.trim();
        if secret.len() < 16 {
            bail!(
                "the token is {} characters long; use at least 16 (e.g. `openssl rand -hex 32`)",
                secret.len()
            );
        }
        if !secret.chars().all(|c| c.is_ascii_graphic()) {
            bail!(
                "the token must be printable ASCII without spaces (it travels in an HTTP header)"
            );
        }
        Ok(Token {
            secret: secret.to_string(),
            hash: blake3::hash(secret.as_bytes()),
        })
    }

    /// `--token-file F` if given, else `MVC_TOKEN` if set, else none.
    pub fn load(file: Option<&Path>) -> Result<Option<Token>> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--token-file {}: cannot read it", file.display()))?;
            warn_if_others_can_read(file);
            return Token::new(&text)
                .map(Some)
                .with_context(|| format!("--token-file {}", file.display()));
        }
        match std::env::var(TOKEN_ENV) {
            Ok(v) if !v.trim().is_empty() => Token::new(&v).map(Some).context(TOKEN_ENV),
            _ => Ok(None),
        }
    }

    pub fn matches(&self, given: &str) -> bool {
        blake3::hash(given.as_bytes()) == self.hash
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

/// A token file that group or others may read gives the token to every account on the
/// machine: warned about, as ssh does for keys (not refused: shared cluster home
/// directories sometimes leave no choice).
fn warn_if_others_can_read(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(file) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        tracing::warn!(
            "--token-file {}: group or others can read it (mode {mode:04o}), and with it run \
             anything on the workers; `chmod 600 {}`",
            file.display(),
            file.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_and_short_ones_are_refused() {
        let t = Token::new("0123456789abcdef-secret\n").unwrap();
        assert!(t.matches("0123456789abcdef-secret"));
        assert!(!t.matches("0123456789abcdef-secreT"));
        let err = Token::new("short").unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
    }
}
