//! Running the external tools the build drives (mke2fs, debugfs, veritysetup,
//! e2fsck, mkfs.vfat, mcopy, grub-mkimage, depmod, dpkg-deb, apt-get, ldd,
//! qemu-img), with the command line and its stderr in every error.

use std::ffi::OsStr;
use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {program} (is it installed? scripts/install-deps.sh installs the build's tools)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The command line as a user would type it, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Runs `cmd` to completion with its output captured; a non-zero exit is an
/// error that carries the command line and the tail of stderr (or stdout
/// when stderr is empty).
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let output = cmd.output().map_err(|source| ToolError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &output.stderr
    } else {
        &output.stdout
    };
    Err(ToolError::Failed {
        command: describe(cmd),
        status: output.status,
        stderr: tail(&String::from_utf8_lossy(text), 20),
    })
}

/// Runs `cmd` and returns its stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String, ToolError> {
    let out = run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `lines` lines of `text`, trimmed.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim().lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_and_quotes() {
        let mut cmd = Command::new("mcopy");
        cmd.args(["-i", "/tmp/esp.img", "a file", "::/EFI"]);
        assert_eq!(describe(&cmd), "mcopy -i /tmp/esp.img 'a file' ::/EFI");
    }

    #[test]
    fn failure_carries_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo bad thing >&2; exit 3"]);
        let err = run(&mut cmd).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bad thing"), "{msg}");
        assert!(msg.contains("sh -c"), "{msg}");
    }

    #[test]
    fn missing_program_is_named() {
        let err = run(&mut Command::new("atoll-no-such-tool")).unwrap_err();
        assert!(err.to_string().contains("atoll-no-such-tool"));
    }
}
