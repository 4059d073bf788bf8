//! A Python venv with packages from PyPI, for the benchmarks that compare mvc with a Python
//! tool (Snakemake, PyTorch).

use std::path::Path;
use std::process::Command;

/// Creates the venv at `venv` (with `python3 -m venv`) and pip-installs `packages` into it;
/// the failing command and its last line of stderr otherwise.
pub fn install(venv: &Path, packages: &[&str]) -> Result<(), String> {
    let step = |program: &Path, args: &[&str]| -> Result<(), String> {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{} {}: {}",
                program.display(),
                args.join(" "),
                err.trim().lines().last().unwrap_or_default()
            ))
        }
    };
    let venv_arg = venv.to_string_lossy().to_string();
    step(Path::new("python3"), &["-m", "venv", &venv_arg])?;
    let mut args = vec!["install", "--quiet"];
    args.extend(packages);
    step(&venv.join("bin/pip"), &args)
}
