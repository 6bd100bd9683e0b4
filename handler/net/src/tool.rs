//! Runs the external networking tools (`ip`, the CNI plugins, `nft`, `sysctl`, `dnsmasq`)
//! with a time limit, and turns a non-zero exit into an error that names the command and
//! carries its stderr.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// How long a tool may run before it is killed.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for a tool's output after it exited. A daemon (dnsmasq) may hand its
/// pipes to a child that outlives the command we started; its output is then cut short.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Longest stderr/stdout excerpt kept in an error.
const MAX_EXCERPT: usize = 4096;

/// Why an external tool could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program could not be started (missing binary, permissions).
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{}` failed ({}): {}", .0.command, .0.status, excerpt_or_none(&.0.stderr))]
    Failed(Box<Failure>),
    /// The program did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    TimedOut {
        /// The command line.
        command: String,
        /// The limit that was exceeded.
        timeout: Duration,
    },
    /// Waiting for the program failed.
    #[error("waiting for `{command}`: {source}")]
    Wait {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What a program that exited unsuccessfully left behind.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The command line.
    pub command: String,
    /// Exit code or signal.
    pub status: String,
    /// What it printed on stdout (CNI plugins report errors there, as JSON).
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

fn excerpt_or_none(text: &str) -> &str {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        "no error output"
    } else {
        trimmed
    }
}

/// What a successful tool printed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Output {
    pub(crate) stdout: String,
}

/// One command to run: program, arguments, extra environment and optional stdin.
#[derive(Debug, Clone)]
pub(crate) struct Invocation {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Invocation {
    /// A command running `program` with no arguments.
    pub(crate) fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Appends one argument.
    pub(crate) fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several arguments.
    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child.
    pub(crate) fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes an inherited environment variable from the child.
    pub(crate) fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Feeds `input` to the child's stdin.
    pub(crate) fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Overrides the time limit.
    #[cfg(test)]
    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line, for logs and errors.
    pub(crate) fn display(&self) -> String {
        let mut line = self.program.to_string_lossy().into_owned();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }

    /// Runs the command to completion; a non-zero exit is an error.
    pub(crate) fn run(&self) -> Result<Output, ToolError> {
        let command = self.display();
        tracing::debug!(%command, "running");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for key in &self.env_remove {
            cmd.env_remove(key);
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().map_err(|source| ToolError::Spawn {
            command: command.clone(),
            source,
        })?;
        if let (Some(input), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            // A child that exits without reading gives EPIPE here, which is not our error:
            // its exit status says what happened.
            thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let stdout = spawn_reader(child.stdout.take());
        let stderr = spawn_reader(child.stderr.take());
        let status = wait_with_deadline(&mut child, self.timeout, &command)?;
        let stdout = collect(stdout);
        let stderr = collect(stderr);
        if status.success() {
            Ok(Output { stdout })
        } else {
            Err(ToolError::Failed(Box::new(Failure {
                command,
                status: describe_status(status),
                stdout: excerpt(stdout),
                stderr: excerpt(stderr),
            })))
        }
    }
}

fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
    command: &str,
) -> Result<ExitStatus, ToolError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                // Already-exited races are harmless: kill then reap either way.
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::TimedOut {
                    command: command.to_string(),
                    timeout,
                });
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(ToolError::Wait {
                    command: command.to_string(),
                    source,
                })
            }
        }
    }
}

/// A pipe end the reader thread drains.
trait Pipe: Read + Send + 'static {}
impl Pipe for ChildStdout {}
impl Pipe for ChildStderr {}

fn spawn_reader<P: Pipe>(pipe: Option<P>) -> Option<Receiver<Vec<u8>>> {
    let mut pipe = pipe?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    Some(rx)
}

fn collect(rx: Option<Receiver<Vec<u8>>>) -> String {
    rx.and_then(|rx| rx.recv_timeout(OUTPUT_GRACE).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn excerpt(mut text: String) -> String {
    if text.len() > MAX_EXCERPT {
        let mut cut = MAX_EXCERPT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown status".to_string(),
    }
}

/// Whether `program` names an existing executable file (absolute path) or one found on PATH.
pub(crate) fn is_executable(program: &OsStr) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |path: &std::path::Path| {
        path.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let path = std::path::Path::new(program);
    if path.components().count() > 1 {
        return is_exec(path);
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| is_exec(&dir.join(path))))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_captures_stdout_and_stdin_round_trips() {
        let out = Invocation::new("cat").stdin("hello").run().unwrap();
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn failure_reports_command_status_and_stderr() {
        let err = Invocation::new("sh")
            .args(["-c", "echo oops >&2; echo out; exit 3"])
            .run()
            .unwrap_err();
        match &err {
            ToolError::Failed(failure) => {
                assert!(failure.command.starts_with("sh -c"));
                assert_eq!(failure.status, "exit code 3");
                assert_eq!(failure.stdout.trim(), "out");
                assert_eq!(failure.stderr.trim(), "oops");
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("exit code 3") && text.contains("oops"),
            "{text}"
        );
    }

    #[test]
    fn environment_is_passed_and_removed() {
        // Cargo sets CARGO_MANIFEST_DIR for test binaries; the child must not inherit it.
        let inherited = std::env::var_os("CARGO_MANIFEST_DIR").is_some();
        let script = "echo \"$A:${CARGO_MANIFEST_DIR:-gone}\"";
        let removed = Invocation::new("sh")
            .args(["-c", script])
            .env("A", "set")
            .env_remove("CARGO_MANIFEST_DIR")
            .run()
            .unwrap();
        assert_eq!(removed.stdout.trim(), "set:gone");
        if inherited {
            let kept = Invocation::new("sh").args(["-c", script]).run().unwrap();
            assert_ne!(kept.stdout.trim(), ":gone");
        }
    }

    #[test]
    fn slow_command_is_killed_at_the_deadline() {
        let started = Instant::now();
        let err = Invocation::new("sleep")
            .arg("10")
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Invocation::new("/nonexistent/ironvisor-tool")
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/ironvisor-tool"));
    }

    #[test]
    fn daemonized_grandchild_holding_the_pipe_does_not_block() {
        let started = Instant::now();
        let out = Invocation::new("sh")
            .args(["-c", "sleep 5 & echo parent-done"])
            .run()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        // The output may be cut short, but the call returns.
        let _ = out;
    }

    #[test]
    fn executable_lookup() {
        assert!(is_executable(OsStr::new("sh")));
        assert!(is_executable(OsStr::new("/bin/sh")));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        assert!(!is_executable(plain.as_os_str()));
        assert!(!is_executable(dir.path().as_os_str()));
        assert!(!is_executable(OsStr::new("no-such-program-ironvisor")));
    }
}
