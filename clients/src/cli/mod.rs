//! The `market-seller` and `market-buyer` command-line interfaces.
//!
//! One subcommand per client function, plus `shell`, which reads the same subcommands line by
//! line from stdin (so a script can pipe a session in; a prompt is shown only when stdin is a
//! terminal). Global options, accepted before or after the subcommand:
//!
//! - `--cluster PATH` (env `MARKET_CLUSTER`, default `./cluster.json`): where to find the
//!   servers ([`ClusterFile`]);
//! - `--server URL` (repeatable): server base URLs, overriding the cluster file;
//! - `--state-dir DIR` (env `MARKET_STATE_DIR`): where session tokens are kept ([`state`]);
//! - `--json`: print the API's JSON, one document per line (`{}` for calls that answer 204),
//!   and errors as a problem document on stderr;
//! - `--timeout-ms N`: the overall deadline of each call (default 15000).
//!
//! In the shell, each line is one subcommand with its options (`--json` may be added to a
//! line; the other global options are those the shell was started with). Empty lines and
//! lines starting with `#` are skipped; words split like a POSIX shell's (`'...'`, `"..."`,
//! backslash); `help` prints the usage; `exit`, `quit` or end of input ends the shell. The
//! shell exits with the code of the first failed line (0 if none failed); `shell --fail-fast`
//! stops at that line. The session file is read once at start and written at `login`.
//!
//! Exit codes (stable, for scripts): [`EXIT_OK`] 0; [`EXIT_API`] 1, the server refused the
//! request (a problem other than 401); [`EXIT_USAGE`] 2, bad command line; [`EXIT_AUTH`] 3,
//! not logged in or the session ended (401); [`EXIT_UNAVAILABLE`] 4, no server answered in
//! time; [`EXIT_LOCAL`] 5, a local problem (cluster file, state directory, undecodable answer).
//!
//! [`state`]: crate::state

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser};

use crate::api::Problem;
use crate::state::{Role, SavedSession, StateDir};
use crate::{ClientConfig, ClientError, ClusterFile, Replicas};

mod buyer;
mod output;
mod seller;

pub use buyer::{buyer_main, BuyerArgs, BuyerCommand, VoteArg};
pub use seller::{seller_main, ConditionArg, SellerArgs, SellerCommand};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The server answered with a problem other than 401 (e.g. 409 `insufficient_quantity`).
pub const EXIT_API: u8 = 1;
/// The command line could not be parsed (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Not logged in, bad credentials, or the session ended: the server said 401.
pub const EXIT_AUTH: u8 = 3;
/// No server replica answered (all refused, timed out or answered 503).
pub const EXIT_UNAVAILABLE: u8 = 4;
/// A local problem: no cluster file or servers, unusable state directory, bad answer.
pub const EXIT_LOCAL: u8 = 5;

/// Options shared by both CLIs and all their subcommands.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The cluster file written by `market up`, listing the servers.
    #[arg(long, global = true, env = "MARKET_CLUSTER", default_value = ClusterFile::DEFAULT_PATH)]
    pub cluster: PathBuf,
    /// A server base URL, e.g. http://127.0.0.1:7000 (repeat for replicas; overrides --cluster).
    #[arg(long = "server", global = true, value_name = "URL")]
    pub servers: Vec<String>,
    /// Where the session token is kept between invocations [default: the user's state
    /// directory, subfolder market].
    #[arg(long, global = true, env = "MARKET_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the API's JSON (one document per line) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Overall deadline of each call, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 15_000)]
    pub timeout_ms: u64,
}

/// A failed CLI command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A client call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local problem (cluster file, state directory).
    #[error("{0}")]
    Local(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(e) if e.is_unauthenticated() => EXIT_AUTH,
            CliError::Client(ClientError::Api(_) | ClientError::Status { .. }) => EXIT_API,
            CliError::Client(ClientError::Unavailable { .. } | ClientError::Timeout(_)) => {
                EXIT_UNAVAILABLE
            }
            CliError::Client(_) | CliError::Local(_) => EXIT_LOCAL,
        }
    }

    /// The error as a problem document (the server's own for API errors).
    pub fn problem(&self) -> Problem {
        match self {
            CliError::Client(ClientError::Api(p)) => p.clone(),
            CliError::Client(e) => Problem {
                type_: "about:blank".into(),
                title: "Client error".into(),
                status: e.status().unwrap_or(0),
                code: e.code().into(),
                detail: e.detail(),
            },
            CliError::Local(detail) => Problem {
                type_: "about:blank".into(),
                title: "Local error".into(),
                status: 0,
                code: "local_error".into(),
                detail: detail.clone(),
            },
        }
    }
}

/// What a command runs with.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) json: bool,
    pub(crate) state: StateDir,
}

impl Ctx {
    /// Saves a new session, warning (not failing) if it cannot be kept.
    pub(crate) fn save_session(&self, role: Role, token: &str, user_id: u64) {
        let session = SavedSession {
            token: token.to_owned(),
            user_id,
        };
        if let Err(e) = self.state.save(role, &session) {
            eprintln!(
                "warning: cannot save the session in {}: {e}",
                self.state.dir().display()
            );
        }
    }

    /// Forgets the saved session.
    pub(crate) fn forget_session(&self, role: Role) {
        if let Err(e) = self.state.remove(role) {
            eprintln!(
                "warning: cannot delete {}: {e}",
                self.state.session_path(role).display()
            );
        }
    }
}

/// One of the two CLIs: how to parse its command line and run its commands.
pub(crate) trait Interface: Sized {
    /// Whose session file this CLI uses.
    const ROLE: Role;
    /// The whole command line.
    type Args: Parser;
    /// One subcommand.
    type Command;
    /// Splits a parsed command line.
    fn split(args: Self::Args) -> (GlobalArgs, Self::Command);
    /// The client over `replicas`.
    fn connect(replicas: Replicas) -> Self;
    /// Restores a saved token.
    fn restore(&self, token: &str) -> Result<(), ClientError>;
    /// `Some(fail_fast)` if `cmd` is `shell`.
    fn shell(cmd: &Self::Command) -> Option<bool>;
    /// Runs one (non-shell) command and prints its result.
    async fn exec(&self, cmd: Self::Command, ctx: &Ctx) -> Result<(), CliError>;
}

/// The entry point of a CLI binary.
pub(crate) fn main<I: Interface>() -> ExitCode {
    let args = I::Args::parse();
    let (global, cmd) = I::split(args);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return ExitCode::from(report(&CliError::Local(e.to_string()), global.json)),
    };
    ExitCode::from(runtime.block_on(run::<I>(global, cmd)))
}

/// Runs `cmd` and returns the exit code.
async fn run<I: Interface>(global: GlobalArgs, cmd: I::Command) -> u8 {
    let json = global.json;
    let (client, ctx) = match setup::<I>(&global) {
        Ok(x) => x,
        Err(e) => return report(&e, json),
    };
    if let Some(fail_fast) = I::shell(&cmd) {
        return shell(&client, &ctx, fail_fast).await;
    }
    match client.exec(cmd, &ctx).await {
        Ok(()) => EXIT_OK,
        Err(e) => report(&e, json),
    }
}

/// Finds the servers and the state directory, builds the client, restores the session.
fn setup<I: Interface>(global: &GlobalArgs) -> Result<(I, Ctx), CliError> {
    let state = match &global.state_dir {
        Some(d) => StateDir::new(d),
        None => StateDir::new(StateDir::default_dir().ok_or_else(|| {
            CliError::Local("no state directory: pass --state-dir or set MARKET_STATE_DIR".into())
        })?),
    };
    let urls = server_urls(global, I::ROLE)?;
    let deadline = Duration::from_millis(global.timeout_ms.max(1));
    let defaults = ClientConfig::default();
    let config = ClientConfig {
        call_deadline: deadline,
        attempt_timeout: defaults.attempt_timeout.min(deadline),
        ..defaults
    };
    let client = I::connect(Replicas::with_config(&urls, config)?);
    match state.load(I::ROLE) {
        Ok(Some(saved)) => {
            if let Err(e) = client.restore(&saved.token) {
                eprintln!("warning: ignoring the saved session: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("warning: ignoring the saved session: {e}"),
    }
    Ok((
        client,
        Ctx {
            json: global.json,
            state,
        },
    ))
}

/// The server URLs for `role`: `--server`s, else the cluster file's list.
fn server_urls(global: &GlobalArgs, role: Role) -> Result<Vec<String>, CliError> {
    if !global.servers.is_empty() {
        return Ok(global.servers.clone());
    }
    let file = ClusterFile::load(&global.cluster).map_err(|e| {
        CliError::Local(format!(
            "cannot read the cluster file {e}; start a cluster with `market up` or pass --server URL"
        ))
    })?;
    let urls = match role {
        Role::Seller => file.seller_servers,
        Role::Buyer => file.buyer_servers,
    };
    if urls.is_empty() {
        return Err(CliError::Local(format!(
            "{} lists no {} servers",
            global.cluster.display(),
            role.as_str()
        )));
    }
    Ok(urls)
}

/// Prints an error to stderr and returns its exit code.
fn report(e: &CliError, json: bool) -> u8 {
    if json {
        match serde_json::to_string(&e.problem()) {
            Ok(s) => eprintln!("{s}"),
            Err(_) => eprintln!("{e}"),
        }
    } else {
        let p = e.problem();
        eprintln!("error: {}: {}", p.code, output::clean(&p.detail));
        if e.exit_code() == EXIT_AUTH {
            eprintln!("hint: log in first with the `login` command");
        }
    }
    e.exit_code()
}

/// The interactive shell: runs stdin's lines as commands until EOF, `exit` or `quit`.
/// Returns the exit code of the first failed command (0 if none failed); with `fail_fast`,
/// stops at that command.
async fn shell<I: Interface>(client: &I, ctx: &Ctx, fail_fast: bool) -> u8 {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let program = <I::Args as clap::CommandFactory>::command()
        .get_name()
        .to_owned();
    let mut status = EXIT_OK;
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("{}> ", I::ROLE.as_str());
            let _ = std::io::stderr().flush();
        }
        let line = match lines.next() {
            None => break,
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                let code = report(&CliError::Local(format!("reading stdin: {e}")), ctx.json);
                return if status == EXIT_OK { code } else { status };
            }
        };
        let code = shell_line(client, ctx, &program, &line).await;
        match code {
            None => break,
            Some(EXIT_OK) => {}
            Some(c) => {
                if status == EXIT_OK {
                    status = c;
                }
                if fail_fast {
                    break;
                }
            }
        }
        let _ = std::io::stdout().flush();
    }
    status
}

/// Runs one shell line; `None` means the shell should end.
async fn shell_line<I: Interface>(client: &I, ctx: &Ctx, program: &str, line: &str) -> Option<u8> {
    let words = match split_words(line) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return Some(EXIT_USAGE);
        }
    };
    match words.first().map(String::as_str) {
        None => return Some(EXIT_OK),
        Some(w) if w.starts_with('#') => return Some(EXIT_OK),
        Some("exit" | "quit") => return None,
        Some("help") => {
            let _ = <I::Args as clap::CommandFactory>::command().print_help();
            return Some(EXIT_OK);
        }
        _ => {}
    }
    let args = match I::Args::try_parse_from(std::iter::once(program.to_owned()).chain(words)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return Some(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let (line_global, cmd) = I::split(args);
    if I::shell(&cmd).is_some() {
        eprintln!("error: already in the shell");
        return Some(EXIT_USAGE);
    }
    let line_ctx = Ctx {
        json: ctx.json || line_global.json,
        state: ctx.state.clone(),
    };
    Some(match client.exec(cmd, &line_ctx).await {
        Ok(()) => EXIT_OK,
        Err(e) => report(&e, line_ctx.json),
    })
}

/// Splits a shell line into words: whitespace separates; `'...'` is literal; `"..."` allows
/// `\"` and `\\`; a backslash outside quotes escapes the next character.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated \" quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        let w = split_words(r#"add-item --name "desk lamp" --keyword 'a b' x\ y """#).unwrap();
        assert_eq!(
            w,
            [
                "add-item",
                "--name",
                "desk lamp",
                "--keyword",
                "a b",
                "x y",
                ""
            ]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words(r#""a\"b\\c\n""#).unwrap(), [r#"a"b\c\n"#]);
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
        assert!(split_words("x\\").is_err());
    }

    #[test]
    fn exit_codes_by_error() {
        let api = |status: u16, code: &str| {
            CliError::Client(ClientError::Api(Problem {
                type_: "about:blank".into(),
                title: "t".into(),
                status,
                code: code.into(),
                detail: "d".into(),
            }))
        };
        assert_eq!(api(409, "cart_empty").exit_code(), EXIT_API);
        assert_eq!(api(401, "unauthenticated").exit_code(), EXIT_AUTH);
        assert_eq!(
            CliError::Client(ClientError::NotLoggedIn).exit_code(),
            EXIT_AUTH
        );
        let unavailable = CliError::Client(ClientError::Unavailable {
            attempts: 3,
            last: "x".into(),
        });
        assert_eq!(unavailable.exit_code(), EXIT_UNAVAILABLE);
        assert_eq!(unavailable.problem().code, "unavailable");
        assert_eq!(
            CliError::Client(ClientError::Timeout(Duration::from_secs(1))).exit_code(),
            EXIT_UNAVAILABLE
        );
        assert_eq!(CliError::Local("x".into()).exit_code(), EXIT_LOCAL);
        assert_eq!(api(409, "cart_empty").problem().code, "cart_empty");
    }
}
