//! `atollctl exec -i` and `exec -it`: the client of
//! [`Request::ExecInteractive`]. A thread copies stdin to the host as
//! [`ExecInput`] lines (and, with a terminal, the window size whenever it
//! changes); the main thread prints the output until the exit comes. With
//! `-t` the local terminal is in raw mode meanwhile, so keys (^C, ^D, ^Z)
//! go to the container's terminal, and it is restored on every way out.

use std::io::{BufRead, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use atoll_common::api::{ExecInput, Request, Response, TermSize};
use nix::sys::termios::{self, SetArg, Termios};

use super::{exit, write_json_line, Client, CtlError};
use crate::utf8::Utf8Chunks;

/// How often the window size is looked at (there is no SIGWINCH handler).
const RESIZE_POLL: Duration = Duration::from_millis(250);

nix::ioctl_read_bad!(get_window_size, nix::libc::TIOCGWINSZ, nix::pty::Winsize);

/// The terminal's size, if `fd` is one.
fn window_size(fd: BorrowedFd<'_>) -> Option<TermSize> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize through the pointer,
    // which points at `ws`, alive and writable for the call.
    unsafe { get_window_size(fd.as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some(TermSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<Self, CtlError> {
        let stdin = std::io::stdin();
        let saved =
            termios::tcgetattr(stdin.as_fd()).map_err(|e| CtlError::Io(std::io::Error::from(e)))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| CtlError::Io(std::io::Error::from(e)))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Copies stdin to the host until it ends (then says so) or the host
/// goes away.
fn pump_stdin(mut writer: UnixStream) {
    let mut stdin = std::io::stdin().lock();
    let mut text = Utf8Chunks::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let data = text.push(&buf[..n]);
        if !data.is_empty() && write_json_line(&mut writer, &ExecInput::Data { data }).is_err() {
            return;
        }
    }
    let data = text.finish();
    if !data.is_empty() {
        let _ = write_json_line(&mut writer, &ExecInput::Data { data });
    }
    let _ = write_json_line(&mut writer, &ExecInput::Eof);
}

/// Sends the window size each time it changes, until the host goes away.
fn pump_resizes(mut writer: UnixStream, mut last: Option<TermSize>) {
    loop {
        std::thread::sleep(RESIZE_POLL);
        let now = window_size(std::io::stdin().as_fd());
        if let Some(size) = now.filter(|s| Some(*s) != last) {
            if write_json_line(&mut writer, &ExecInput::Resize(size)).is_err() {
                return;
            }
            last = Some(size);
        }
    }
}

/// Runs the interactive exec; the command's exit code.
pub fn exec(client: Client, name: String, args: Vec<String>, tty: bool) -> Result<i32, CtlError> {
    let stdin = std::io::stdin();
    let size = window_size(stdin.as_fd());
    if tty && !nix::unistd::isatty(stdin.as_raw_fd()).unwrap_or(false) {
        return Err(CtlError::Usage(
            "exec -t: stdin is not a terminal (use -i without -t to pipe input)".into(),
        ));
    }
    let raw = if tty { Some(RawMode::enter()?) } else { None };
    let req = Request::ExecInteractive {
        name,
        args,
        tty,
        size: if tty { size } else { None },
    };
    let (mut reader, writer) = client.send(&req)?;
    let input = writer.try_clone().map_err(CtlError::Io)?;
    std::thread::spawn(move || pump_stdin(input));
    if tty {
        let resizes = writer.try_clone().map_err(CtlError::Io)?;
        std::thread::spawn(move || pump_resizes(resizes, size));
    }
    let end = read_answer(&mut reader);
    drop(raw);
    match end? {
        Some(code) => Ok(code.clamp(0, 255)),
        None => Err(CtlError::Unexpected("no exit status in the answer".into())),
    }
}

/// Prints the output until the exit (its code) and `done`.
fn read_answer(reader: &mut impl BufRead) -> Result<Option<i32>, CtlError> {
    let mut code = None;
    let mut failed = None;
    super::read_responses(reader, |r| {
        match r {
            Response::ExecOutput { stream, data } => {
                if let Err(e) = super::write_output(&stream, &data) {
                    failed = Some(e);
                    return false;
                }
            }
            Response::ExecExit { code: c, .. } => code = c.or(Some(exit::HOST_ERROR)),
            _ => {}
        }
        true
    })?;
    match failed {
        Some(e) => Err(CtlError::Io(e)),
        None => Ok(code),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_printed_until_done_with_the_exit_code() {
        let answer = concat!(
            r#"{"exec-output":{"stream":"stdout","data":"hi\n"}}"#,
            "\n",
            r#"{"exec-exit":{"code":3,"timed_out":false}}"#,
            "\n\"done\"\n",
        );
        let code = read_answer(&mut std::io::Cursor::new(answer)).unwrap();
        assert_eq!(code, Some(3));
        let cut = &answer[..answer.find("\"done\"").unwrap()];
        assert!(matches!(
            read_answer(&mut std::io::Cursor::new(cut)),
            Err(CtlError::Truncated)
        ));
        let refused = "{\"error\":{\"message\":\"no container named \\\"x\\\"\"}}\n";
        assert!(matches!(
            read_answer(&mut std::io::Cursor::new(refused)),
            Err(CtlError::Host(m)) if m.contains("no container")
        ));
    }

    #[test]
    fn stdin_goes_out_as_data_then_eof() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut line = Vec::new();
        let mut w = a;
        write_json_line(
            &mut w,
            &ExecInput::Data {
                data: "ls\n".into(),
            },
        )
        .unwrap();
        write_json_line(&mut w, &ExecInput::Eof).unwrap();
        drop(w);
        std::io::BufReader::new(b).read_to_end(&mut line).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"input\":\"data\",\"data\":\"ls\\n\"}\n{\"input\":\"eof\"}\n"
        );
    }
}
