//! The command line as typed: raw arguments, nothing resolved.
//!
//! Keys, invites and relay addresses are taken as strings here and parsed by
//! the commands, so a bad value is reported as sotto's own one-line error with
//! the fix, not as a generic usage message. No argument ever carries a secret:
//! passphrases come from a file, the environment or a terminal prompt.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::home::HOME_ENV;

/// sotto: end-to-end encrypted chat over a relay nobody has to trust.
#[derive(Debug, Parser)]
#[command(name = "sotto", version, max_term_width = 100)]
pub struct Cli {
    /// Directory holding identity.key, config.toml, contacts.toml and local state
    /// [default: sotto in the platform's config directory].
    #[arg(long, global = true, env = HOME_ENV, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Read the identity's passphrase from the first line of FILE (else
    /// $SOTTO_PASSPHRASE, else a prompt on a terminal).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Log what happens to stderr (-v info, -vv debug, -vvv trace); RUST_LOG
    /// overrides. Message text and secrets are never logged.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an identity (never overwrites one) and write config.toml.
    Init(InitArgs),
    /// Add a contact by a short code spoken between you: without CODE, print
    /// a code (first line of stdout) and wait; with it, complete the pairing.
    Pair(PairArgs),
    /// Pin the relay you read from.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Print your public key (first line), optionally an invite and a QR code.
    Id(IdArgs),
    /// Manage contacts (contacts.toml).
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Seal a text message to a contact and hand it to the relay.
    Send(SendArgs),
    /// Fetch, print and acknowledge pending messages.
    Inbox,
    /// Live chat: lines on stdin are sent, messages arrive on stdout.
    Chat(ChatArgs),
    /// Print the messages exchanged with a contact or in a group, oldest first.
    History(HistoryArgs),
    /// Encrypt files and drop them on the relay for a contact (resumable).
    SendFile(SendFileArgs),
    /// Print pending messages and download pending files from contacts into a
    /// directory (strangers' only with --from-strangers).
    ReceiveAll(ReceiveAllArgs),
    /// List the files waiting for you (sender, name, size, age, ID) without
    /// downloading them; --reject ID deletes one.
    Files(FilesArgs),
    /// Your mailbox's delivery token (delivery.token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (sotto.1, sotto-send.1, ...) into DIR.
    Man {
        /// Where to write them (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `sotto init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The name you go by (stored in config.toml).
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Join someone from their invite (`sotto id --invite`, line 2): read
    /// from their relay, and add them as a contact (see --contact).
    #[arg(long, value_name = "INVITE", conflicts_with_all = ["relay", "relay_key"])]
    pub join: Option<String>,
    /// With --join: the name to file the inviter under [default: inviter].
    #[arg(long, value_name = "NAME", requires = "join")]
    pub contact: Option<String>,
    /// The relay you read from (needs --relay-key).
    #[arg(long, value_name = "HOST:PORT", requires = "relay_key")]
    pub relay: Option<String>,
    /// The relay's public key, sottorelay1... (needs --relay).
    #[arg(long, value_name = "KEY", requires = "relay")]
    pub relay_key: Option<String>,
    /// Protect the key with a passphrase asked on the terminal (twice). A key is
    /// also protected when --passphrase-file or $SOTTO_PASSPHRASE is given.
    #[arg(long)]
    pub passphrase: bool,
    /// Keep no history of messages on this device (`history = false` in
    /// config.toml).
    #[arg(long)]
    pub no_history: bool,
}

/// `sotto pair`.
#[derive(Debug, Args)]
pub struct PairArgs {
    /// The name to file the other person under.
    pub name: String,
    /// The code the other side's `sotto pair NAME` printed, such as
    /// 7-revenge-guitarist; without it, this side prints one and waits.
    pub code: Option<String>,
    /// With CODE: the inviter's relay, when it is not the relay you read
    /// from (its key is learned through the pairing and checked).
    #[arg(long, value_name = "HOST:PORT", requires = "code")]
    pub relay: Option<String>,
}

/// `sotto relay ...`.
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Pin the relay address and key (the only way to change the pinned key).
    Set {
        /// Where the relay listens.
        #[arg(value_name = "HOST:PORT")]
        addr: String,
        /// The key it prints when it starts (sottorelay1...).
        #[arg(value_name = "KEY")]
        key: String,
        /// Another address of the same relay (one of its nodes, proving the
        /// same key), tried when the first does not answer; repeatable.
        #[arg(long = "node", value_name = "HOST:PORT")]
        nodes: Vec<String>,
    },
}

/// `sotto id`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Also print an invite (key + relay + relay key + delivery token) as the
    /// second line.
    #[arg(long)]
    pub invite: bool,
    /// Also draw the invite (or, without a relay, the key) as a QR code.
    #[arg(long)]
    pub qr: bool,
}

/// `sotto contact ...`.
#[derive(Debug, Subcommand)]
pub enum ContactCommand {
    /// Add a contact from their key (sotto1...) or invite (sottoinvite1...).
    Add(ContactAddArgs),
    /// List contacts and groups, one per line.
    List,
    /// Remove a contact.
    Remove {
        /// The contact's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Print the safety number to compare with the contact.
    Verify {
        /// The contact's name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Mark the contact as verified (after comparing the numbers).
        #[arg(long)]
        confirm: bool,
    },
}

/// `sotto contact add`.
#[derive(Debug, Args)]
pub struct ContactAddArgs {
    /// Name to file them under (A-Z a-z 0-9 . _ -).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Their key or invite (an invite already holds relay, relay key and token).
    #[arg(value_name = "KEY|INVITE")]
    pub key: String,
    /// The relay they read from (needs --relay-key); without it they are
    /// reached through your own relay.
    #[arg(long, value_name = "HOST:PORT", requires = "relay_key")]
    pub relay: Option<String>,
    /// That relay's public key, sottorelay1... (needs --relay).
    #[arg(long, value_name = "KEY", requires = "relay")]
    pub relay_key: Option<String>,
    /// Their delivery token there, sottotoken1... (needs --relay).
    #[arg(long, value_name = "TOKEN", requires = "relay")]
    pub token: Option<String>,
}

/// `sotto token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Replace your mailbox's delivery token in this home; new invites carry
    /// the new one.
    Rotate,
}

/// `sotto send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The contact's name (a group's with --group).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The message; `-` reads it from stdin.
    #[arg(value_name = "TEXT", allow_hyphen_values = true)]
    pub text: String,
    /// NAME is a group of contacts.toml: one envelope goes to each member.
    #[arg(long)]
    pub group: bool,
}

/// `sotto chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Whom lines go to: a contact or a group (switch with `/to NAME`).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// NAME is a group.
    #[arg(long, requires = "name")]
    pub group: bool,
    /// Line mode even on a terminal: no interactive screen.
    #[arg(long)]
    pub plain: bool,
}

/// `sotto history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The contact or group.
    #[arg(value_name = "NAME", required_unless_present = "clear")]
    pub name: Option<String>,
    /// Remove the whole history kept on this device, with everyone.
    #[arg(long, conflicts_with = "name")]
    pub clear: bool,
}

/// `sotto send-file`.
#[derive(Debug, Args)]
pub struct SendFileArgs {
    /// The contact's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The files to send; a directory goes as one tree (symbolic links in it
    /// are skipped, with a notice). Run the same command again to resume an
    /// interrupted upload.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// No progress bars (they are only drawn when stderr is a terminal anyway).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `sotto receive-all`.
#[derive(Debug, Args)]
pub struct ReceiveAllArgs {
    /// Where received files go; it must exist. Existing files are never
    /// overwritten: a taken name becomes `name (1).ext` (a directory's,
    /// `name (1)`).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Only the files from this contact.
    #[arg(long, value_name = "NAME")]
    pub from: Option<String>,
    /// Also the files from strangers (keys not in contacts.toml), which are
    /// otherwise left waiting: `sotto files` lists them.
    #[arg(long)]
    pub from_strangers: bool,
    /// No progress bars (they are only drawn when stderr is a terminal anyway).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `sotto files`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Delete the waiting file ID (as listed; a unique prefix will do) from
    /// the relay, unread.
    #[arg(long, value_name = "ID")]
    pub reject: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sotto").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn relay_and_relay_key_go_together() {
        assert!(parse(&["init", "--relay", "h:1"]).is_err());
        assert!(parse(&["init", "--relay-key", "k"]).is_err());
        let cli = parse(&["init", "--relay", "h:1", "--relay-key", "k", "--name", "al"]).unwrap();
        match cli.command {
            Command::Init(a) => {
                assert_eq!(a.relay.as_deref(), Some("h:1"));
                assert_eq!(a.relay_key.as_deref(), Some("k"));
                assert_eq!(a.name.as_deref(), Some("al"));
                assert!(!a.passphrase);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&[
            "inbox",
            "--home",
            "/tmp/h",
            "--passphrase-file",
            "/p",
            "-vv",
        ])
        .unwrap();
        assert_eq!(cli.home, Some(PathBuf::from("/tmp/h")));
        assert_eq!(cli.passphrase_file, Some(PathBuf::from("/p")));
        assert_eq!(cli.verbose, 2);
    }

    #[test]
    fn message_text_may_be_a_dash_or_start_with_one() {
        for text in ["-", "-5 degrees outside", "hello"] {
            match parse(&["send", "bob", text]).unwrap().command {
                Command::Send(a) => assert_eq!(a.text, text),
                other => panic!("{other:?}"),
            }
        }
        assert!(parse(&["send", "bob"]).is_err());
    }

    #[test]
    fn no_option_takes_a_secret() {
        // A passphrase is a flag (prompt) or a file, never a value.
        assert!(parse(&["init", "--passphrase", "hunter2"]).is_err());
        let cmd = Cli::command();
        let init = cmd.find_subcommand("init").unwrap();
        let pass = init
            .get_arguments()
            .find(|a| a.get_id() == "passphrase")
            .unwrap();
        assert!(!pass.get_action().takes_values());
    }

    #[test]
    fn file_commands_parse() {
        match parse(&["send-file", "bob", "a", "b c", "--quiet"])
            .unwrap()
            .command
        {
            Command::SendFile(a) => {
                assert_eq!(a.name, "bob");
                assert_eq!(a.paths, vec![PathBuf::from("a"), PathBuf::from("b c")]);
                assert!(a.quiet);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["send-file", "bob"]).is_err());
        match parse(&["receive-all"]).unwrap().command {
            Command::ReceiveAll(a) => {
                assert_eq!(a.dir, PathBuf::from("."));
                assert!(!a.quiet);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["receive-all", "--from", "bob", "--from-strangers"])
            .unwrap()
            .command
        {
            Command::ReceiveAll(a) => {
                assert_eq!(a.from.as_deref(), Some("bob"));
                assert!(a.from_strangers);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["files", "--reject", "3f2a9c1d"]).unwrap().command {
            Command::Files(a) => assert_eq!(a.reject.as_deref(), Some("3f2a9c1d")),
            other => panic!("{other:?}"),
        }
        match parse(&["receive-all", "--dir", "/tmp/in", "-q"])
            .unwrap()
            .command
        {
            Command::ReceiveAll(a) => {
                assert_eq!(a.dir, PathBuf::from("/tmp/in"));
                assert!(a.quiet);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chat_history_and_group_send_parse() {
        match parse(&["send", "--group", "team", "hi all"])
            .unwrap()
            .command
        {
            Command::Send(a) => {
                assert!(a.group);
                assert_eq!((a.name.as_str(), a.text.as_str()), ("team", "hi all"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["chat"]).unwrap().command {
            Command::Chat(a) => assert!(a.name.is_none() && !a.group),
            other => panic!("{other:?}"),
        }
        match parse(&["chat", "--group", "team"]).unwrap().command {
            Command::Chat(a) => assert!(a.group && a.name.as_deref() == Some("team")),
            other => panic!("{other:?}"),
        }
        match parse(&["chat", "--plain", "bob"]).unwrap().command {
            Command::Chat(a) => assert!(a.plain && a.name.as_deref() == Some("bob")),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["chat", "--group"]).is_err());
        assert!(parse(&["history"]).is_err());
        match parse(&["history", "bob"]).unwrap().command {
            Command::History(a) => assert_eq!(a.name.as_deref(), Some("bob")),
            other => panic!("{other:?}"),
        }
        match parse(&["history", "--clear"]).unwrap().command {
            Command::History(a) => assert!(a.clear && a.name.is_none()),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["history", "bob", "--clear"]).is_err());
        match parse(&["init", "--no-history"]).unwrap().command {
            Command::Init(a) => assert!(a.no_history),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn contact_subcommands_parse() {
        match parse(&["contact", "verify", "bob", "--confirm"])
            .unwrap()
            .command
        {
            Command::Contact(ContactCommand::Verify { name, confirm }) => {
                assert_eq!(name, "bob");
                assert!(confirm);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["contact", "add", "bob"]).is_err());
        assert!(parse(&["relay", "set", "h:1"]).is_err());
        assert!(matches!(
            parse(&["token", "rotate"]).unwrap().command,
            Command::Token(TokenCommand::Rotate)
        ));
    }

    #[test]
    fn contact_add_takes_a_relay_only_with_its_key() {
        let add = |extra: &[&str]| {
            let mut args = vec!["contact", "add", "bob", "sotto1k"];
            args.extend_from_slice(extra);
            parse(&args).map(|cli| match cli.command {
                Command::Contact(ContactCommand::Add(a)) => a,
                other => panic!("{other:?}"),
            })
        };
        let a = add(&[]).unwrap();
        assert_eq!((a.name.as_str(), a.key.as_str()), ("bob", "sotto1k"));
        assert!(a.relay.is_none() && a.relay_key.is_none() && a.token.is_none());
        let a = add(&["--relay", "h:1", "--relay-key", "rk", "--token", "t"]).unwrap();
        assert_eq!(a.relay.as_deref(), Some("h:1"));
        assert_eq!(a.relay_key.as_deref(), Some("rk"));
        assert_eq!(a.token.as_deref(), Some("t"));
        for alone in [
            &["--relay", "h:1"][..],
            &["--relay-key", "rk"],
            &["--token", "t"],
            &["--relay-key", "rk", "--token", "t"],
        ] {
            let err = add(alone).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{alone:?}"
            );
        }
    }
}
