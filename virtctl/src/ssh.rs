//! `virtctl ssh` and `virtctl scp`: the local OpenSSH client, connected to the guest
//! through `virtctl port-forward --stdio` as its `ProxyCommand` (KubeVirt's "local ssh"
//! mode), on a cluster and on the standalone node alike. The guest's host key is
//! remembered per VM (`HostKeyAlias vm.NAME.NAMESPACE`), so two VMs never share a
//! known_hosts entry.

use std::ffi::OsString;
use std::path::Path;

use crate::cli::{Cli, LoginArgs, ScpArgs, SshArgs};
use crate::port_forward::{target_name, PortForwardError};

/// Why ssh or scp cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The target does not name a VM.
    #[error(transparent)]
    Target(#[from] PortForwardError),
    /// No user: neither `USER@` nor `--username`.
    #[error("no user to log in as: give USER@vm/NAME or --username")]
    NoUser,
    /// scp without a VM side.
    #[error("scp: neither {0:?} names a VM path; write the VM's side as [USER@]vm/NAME:PATH")]
    ScpNoVm(Vec<String>),
    /// scp naming two VMs.
    #[error(
        "scp: {first:?} and {second:?} name different VMs; copy between a VM and this machine"
    )]
    ScpTwoVms {
        /// The first VM side.
        first: String,
        /// The other one.
        second: String,
    },
    /// The client could not be run.
    #[error("cannot run {program}: {source} (install openssh-client)")]
    Exec {
        /// ssh or scp.
        program: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// The VM a command reaches, and how: the `ProxyCommand` and the per-VM host name.
struct Route {
    proxy: String,
    host: String,
}

impl Route {
    /// The route to `port` of VM `name`, with `virtctl` (this program, `self_exe`) and the
    /// global options of `cli` in the `ProxyCommand`.
    fn new(cli: &Cli, name: &str, port: u16, self_exe: &Path) -> Self {
        let namespace = cli.namespace();
        let mut proxy = vec![shell_word(&self_exe.to_string_lossy())];
        let mut option = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                proxy.push(flag.into());
                proxy.push(shell_word(&value));
            }
        };
        if cli.standalone() {
            option(
                "--socket",
                Some(cli.socket().to_string_lossy().into_owned()),
            );
        } else {
            option(
                "--kubeconfig",
                cli.kubeconfig
                    .as_ref()
                    .map(|k| k.to_string_lossy().into_owned()),
            );
            option("--context", cli.context.clone());
        }
        option("--namespace", cli.namespace.clone());
        proxy.extend([
            "port-forward".into(),
            "--stdio".into(),
            shell_word(&format!("vmi/{name}")),
            port.to_string(),
        ]);
        Self {
            proxy: proxy.join(" "),
            host: format!("vm.{name}.{namespace}"),
        }
    }

    /// `program` with what every client gets: the proxy, the host-key alias, the key and
    /// the user's own options.
    fn client(&self, program: &str, login: &LoginArgs) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            program.into(),
            "-o".into(),
            format!("ProxyCommand={}", self.proxy).into(),
            "-o".into(),
            format!("HostKeyAlias={}", self.host).into(),
        ];
        if let Some(identity) = &login.identity_file {
            argv.push("-i".into());
            argv.push(identity.clone().into_os_string());
        }
        argv.extend(login.local_ssh_opts.iter().map(OsString::from));
        argv
    }
}

/// `USER@TARGET` or `TARGET`, with `--username` taking precedence.
fn user_and_target<'a>(
    text: &'a str,
    username: Option<&String>,
) -> Result<(String, &'a str), SshError> {
    let (user, target) = match text.split_once('@') {
        Some((user, target)) => (Some(user.to_string()), target),
        None => (None, text),
    };
    let user = username
        .cloned()
        .or(user)
        .filter(|u| !u.is_empty())
        .ok_or(SshError::NoUser)?;
    Ok((user, target))
}

/// The ssh command line for `args`: `ssh OPTIONS... USER@HOST [COMMAND]`.
pub fn ssh_argv(cli: &Cli, args: &SshArgs, self_exe: &Path) -> Result<Vec<OsString>, SshError> {
    let (user, target) = user_and_target(&args.target, args.login.username.as_ref())?;
    let name = target_name(target)?;
    let route = Route::new(cli, name, args.port, self_exe);
    let mut argv = route.client("ssh", &args.login);
    argv.push("-l".into());
    argv.push(user.into());
    argv.push(route.host.into());
    if let Some(command) = &args.command {
        argv.push("--".into());
        argv.push(command.into());
    }
    Ok(argv)
}

/// A VM side of scp: `[USER@]vm/NAME:PATH` (also `vmi/`); None for a local path.
fn vm_path(text: &str) -> Option<(Option<&str>, &str, &str)> {
    let (user, rest) = match text.split_once('@') {
        Some((user, rest)) if !user.contains('/') && !user.contains(':') => (Some(user), rest),
        _ => (None, text),
    };
    let (target, path) = rest.split_once(':')?;
    let (kind, name) = target.split_once('/')?;
    let is_vm = matches!(
        kind,
        "vm" | "vms" | "vmi" | "vmis" | "virtualmachine" | "virtualmachineinstance"
    );
    (is_vm && !name.is_empty() && !name.contains('/')).then_some((user, name, path))
}

/// The scp command line for `args`: each VM side rewritten to `USER@HOST:PATH`.
pub fn scp_argv(cli: &Cli, args: &ScpArgs, self_exe: &Path) -> Result<Vec<OsString>, SshError> {
    let mut vm: Option<(&str, &str)> = None;
    let mut user = args.login.username.clone();
    for text in &args.paths {
        let Some((given_user, name, _)) = vm_path(text) else {
            continue;
        };
        match vm {
            Some((first, other)) if other != name => {
                return Err(SshError::ScpTwoVms {
                    first: first.to_string(),
                    second: text.clone(),
                })
            }
            _ => vm = Some((text, name)),
        }
        if user.is_none() {
            user = given_user.map(str::to_string);
        }
    }
    let Some((_, name)) = vm else {
        return Err(SshError::ScpNoVm(args.paths.clone()));
    };
    let user = user.filter(|u| !u.is_empty()).ok_or(SshError::NoUser)?;
    let route = Route::new(cli, name, args.port, self_exe);
    let mut argv = route.client("scp", &args.login);
    if args.recursive {
        argv.push("-r".into());
    }
    if args.preserve {
        argv.push("-p".into());
    }
    argv.push("--".into());
    for text in &args.paths {
        argv.push(match vm_path(text) {
            Some((_, _, path)) => format!("{user}@{}:{path}", route.host).into(),
            None => text.into(),
        });
    }
    Ok(argv)
}

/// Replaces this process by `argv` (ssh or scp); returns only when that fails.
pub fn exec(argv: &[OsString]) -> SshError {
    use std::os::unix::process::CommandExt;
    let program = if argv.first().is_some_and(|p| p == "scp") {
        "scp"
    } else {
        "ssh"
    };
    let Some((first, rest)) = argv.split_first() else {
        return SshError::Exec {
            program,
            source: std::io::ErrorKind::InvalidInput.into(),
        };
    };
    SshError::Exec {
        program,
        source: std::process::Command::new(first).args(rest).exec(),
    }
}

/// Runs `ssh` or `scp` for the command line: replaces this process, so it returns only
/// an error.
pub fn exec_client(cli: &Cli) -> Option<SshError> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(source) => {
            return Some(SshError::Exec {
                program: "ssh",
                source,
            })
        }
    };
    let argv = match &cli.command {
        crate::cli::Command::Ssh(args) => ssh_argv(cli, args, &exe),
        crate::cli::Command::Scp(args) => scp_argv(cli, args, &exe),
        _ => return None,
    };
    Some(match argv {
        Ok(argv) => exec(&argv),
        Err(error) => error,
    })
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

    fn scp(line: &[&str]) -> Result<Vec<String>, SshError> {
        let cli = Cli::try_parse_from(line).unwrap();
        let crate::cli::Command::Scp(args) = &cli.command else {
            panic!("not scp")
        };
        scp_argv(&cli, args, Path::new("/usr/local/bin/virtctl"))
            .map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn on_the_standalone_node_the_proxy_names_the_daemon_socket() {
        let args = argv(&["virtctl", "--socket", "/run/iv/h.sock", "ssh", "root@vm/db"]).unwrap();
        assert_eq!(
            args[2],
            "ProxyCommand=/usr/local/bin/virtctl --socket /run/iv/h.sock port-forward --stdio vmi/db 22"
        );
        assert_eq!(args[4], "HostKeyAlias=vm.db.default");
    }

    #[test]
    fn scp_rewrites_the_vm_side_and_keeps_local_paths() {
        let args = scp(&[
            "virtctl",
            "--socket",
            "/s",
            "-n",
            "web",
            "scp",
            "-r",
            "-i",
            "/k/id",
            "-P",
            "2222",
            "./a:b",
            "debian@vm/db:/tmp/x",
        ])
        .unwrap();
        assert_eq!(
            args,
            [
                "scp",
                "-o",
                "ProxyCommand=/usr/local/bin/virtctl --socket /s --namespace web port-forward --stdio vmi/db 2222",
                "-o",
                "HostKeyAlias=vm.db.web",
                "-i",
                "/k/id",
                "-r",
                "--",
                "./a:b",
                "debian@vm.db.web:/tmp/x",
            ]
        );
        let back = scp(&[
            "virtctl",
            "--socket",
            "/s",
            "scp",
            "-l",
            "root",
            "vmi/db:/etc/hostname",
            ".",
        ])
        .unwrap();
        assert_eq!(
            &back[back.len() - 2..],
            ["root@vm.db.default:/etc/hostname", "."]
        );
    }

    #[test]
    fn scp_needs_one_vm_and_a_user() {
        let none = scp(&["virtctl", "--socket", "/s", "scp", "a", "b:c"]).unwrap_err();
        assert!(matches!(none, SshError::ScpNoVm(_)), "{none}");
        assert!(none.to_string().contains("vm/NAME:PATH"), "{none}");
        let two = scp(&["virtctl", "--socket", "/s", "scp", "u@vm/a:/x", "u@vm/b:/y"]).unwrap_err();
        assert!(two.to_string().contains("vm/b:/y"), "{two}");
        assert!(matches!(
            scp(&["virtctl", "--socket", "/s", "scp", "vm/a:/x", "."]),
            Err(SshError::NoUser)
        ));
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/usr/bin/virtctl"), "/usr/bin/virtctl");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
