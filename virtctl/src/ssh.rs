//! `virtctl ssh`: the local OpenSSH client, connected to the guest through
//! `virtctl port-forward --stdio` as its `ProxyCommand` (KubeVirt's "local ssh" mode). The
//! guest's host key is remembered per VM (`HostKeyAlias vm.NAME.NAMESPACE`), so two VMs
//! never share a known_hosts entry.

use std::ffi::OsString;
use std::path::Path;

use crate::cli::{Cli, SshArgs};
use crate::port_forward::{target_name, PortForwardError};

/// Why ssh cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The target does not name a VM.
    #[error(transparent)]
    Target(#[from] PortForwardError),
    /// No user: neither `USER@` nor `--username`.
    #[error("no user to log in as: give USER@vm/NAME or --username")]
    NoUser,
    /// The ssh client could not be run.
    #[error("cannot run ssh: {0} (install openssh-client)")]
    Exec(std::io::Error),
}

/// The ssh command line for `args`: `ssh OPTIONS... USER@HOST [COMMAND]`, with `virtctl`
/// (this program, `self_exe`) and the global options of `cli` in the `ProxyCommand`.
pub fn ssh_argv(cli: &Cli, args: &SshArgs, self_exe: &Path) -> Result<Vec<OsString>, SshError> {
    let (user, target) = match args.target.split_once('@') {
        Some((user, target)) => (Some(user.to_string()), target),
        None => (None, args.target.as_str()),
    };
    let user = args
        .username
        .clone()
        .or(user)
        .filter(|u| !u.is_empty())
        .ok_or(SshError::NoUser)?;
    let name = target_name(target)?;
    let namespace = cli.namespace.clone().unwrap_or_else(|| "default".into());
    let mut proxy = vec![shell_word(&self_exe.to_string_lossy())];
    if let Some(kubeconfig) = &cli.kubeconfig {
        proxy.push("--kubeconfig".into());
        proxy.push(shell_word(&kubeconfig.to_string_lossy()));
    }
    if let Some(context) = &cli.context {
        proxy.push("--context".into());
        proxy.push(shell_word(context));
    }
    if let Some(namespace) = &cli.namespace {
        proxy.push("--namespace".into());
        proxy.push(shell_word(namespace));
    }
    proxy.extend([
        "port-forward".into(),
        "--stdio".into(),
        shell_word(&format!("vmi/{name}")),
        args.port.to_string(),
    ]);
    let mut argv: Vec<OsString> = vec!["ssh".into()];
    argv.push("-o".into());
    argv.push(format!("ProxyCommand={}", proxy.join(" ")).into());
    argv.push("-o".into());
    argv.push(format!("HostKeyAlias=vm.{name}.{namespace}").into());
    if let Some(identity) = &args.identity_file {
        argv.push("-i".into());
        argv.push(identity.clone().into_os_string());
    }
    argv.extend(args.local_ssh_opts.iter().map(OsString::from));
    argv.push("-l".into());
    argv.push(user.into());
    argv.push(format!("vm.{name}.{namespace}").into());
    if let Some(command) = &args.command {
        argv.push("--".into());
        argv.push(command.into());
    }
    Ok(argv)
}

/// Replaces this process by ssh; returns only when that fails.
pub fn exec(argv: &[OsString]) -> SshError {
    use std::os::unix::process::CommandExt;
    let Some((program, rest)) = argv.split_first() else {
        return SshError::Exec(std::io::ErrorKind::InvalidInput.into());
    };
    SshError::Exec(std::process::Command::new(program).args(rest).exec())
}

/// `word` quoted for the shell ssh runs the ProxyCommand with, when it needs quoting.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn argv(line: &[&str]) -> Result<Vec<String>, SshError> {
        let cli = Cli::try_parse_from(line).unwrap();
        let crate::cli::Command::Ssh(args) = &cli.command else {
            panic!("not ssh")
        };
        ssh_argv(&cli, args, Path::new("/usr/local/bin/virtctl"))
            .map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn ssh_goes_through_port_forward_with_the_global_options() {
        let args = argv(&[
            "virtctl",
            "--kubeconfig",
            "/tmp/my config",
            "-n",
            "web",
            "ssh",
            "-i",
            "/k/id",
            "-t",
            "-oStrictHostKeyChecking=no",
            "-c",
            "cat /etc/hostname",
            "debian@vm/db",
        ])
        .unwrap();
        assert_eq!(
            args,
            [
                "ssh",
                "-o",
                "ProxyCommand=/usr/local/bin/virtctl --kubeconfig '/tmp/my config' --namespace web port-forward --stdio vmi/db 22",
                "-o",
                "HostKeyAlias=vm.db.web",
                "-i",
                "/k/id",
                "-oStrictHostKeyChecking=no",
                "-l",
                "debian",
                "vm.db.web",
                "--",
                "cat /etc/hostname",
            ]
        );
    }

    #[test]
    fn a_user_is_required_and_the_target_must_be_a_vm() {
        assert!(matches!(
            argv(&["virtctl", "ssh", "vm/db"]),
            Err(SshError::NoUser)
        ));
        let args = argv(&["virtctl", "ssh", "-l", "root", "-p", "2222", "db"]).unwrap();
        assert!(args.iter().any(|a| a.ends_with("vmi/db 2222")), "{args:?}");
        assert!(argv(&["virtctl", "ssh", "me@pod/db"]).is_err());
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/usr/bin/virtctl"), "/usr/bin/virtctl");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
