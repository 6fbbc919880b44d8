//! `mfbatch serve`: the daemon on stdio, a unix socket or a loopback TCP port (with a token);
//! SIGTERM / Ctrl-C detach every connection (jobs keep running), write what is queued, exit 0.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use mfbatch::aws::{ClientOptions, Clients};
use mfbatch::serve::protocol::EndMode;
use mfbatch::serve::{session, Daemon, Limits, ServeConfig};
use mfbatch::settings::{self, Key, Sources};
use tokio::task::JoinSet;

use super::exit;
use super::failure::Failure;
use super::signals::Signals;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Speak the protocol on stdin/stdout (diagnostics go to stderr).
    #[arg(long, conflicts_with = "listen")]
    pub stdio: bool,
    /// unix:PATH (its directory must be private, mode 0700) or 127.0.0.1:PORT (needs --token-file).
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
    /// The token TCP clients send in hello; created (mode 0600) when missing.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Where the journal lives [default: ~/.local/state/mfbatch/serve].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Launches accepted and not yet submitted; beyond this `launch` answers busy.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_pending: usize,
    /// Launches packaging and staging at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_stagings: usize,
    /// SubmitJob calls per second (Batch's account quota is about 50/s for all callers).
    #[arg(long, value_name = "N", default_value_t = 20.0)]
    pub submit_rate: f64,
}

pub async fn run(args: ServeArgs) -> Result<u8, Failure> {
    let listen = match (&args.listen, args.stdio) {
        (None, true) => None,
        (Some(address), false) => Some(Listen::parse(address, args.token_file.as_deref())?),
        _ => return Err(usage("give --stdio or --listen ADDRESS")),
    };
    let settings = settings::resolve(&Sources::from_process(BTreeMap::new()))?;
    let mut config = ServeConfig::new(match args.state_dir {
        Some(dir) => dir,
        None => default_state_dir()?,
    });
    config.limits = Limits {
        max_pending: args.max_pending,
        max_stagings: args.max_stagings,
        submits_per_second: args.submit_rate,
    };
    let clients = Clients::from_environment(&ClientOptions {
        s3_endpoint_url: settings.get(Key::S3EndpointUrl).map(str::to_owned),
        max_attempts: None,
    })
    .await?;
    config.tracker = super::follow::tracker_config(&settings, clients.region(), None, None)?;
    let mut signals = Signals::install().map_err(|e| Failure::new(e, None, exit::FAILURE))?;
    let daemon = match &listen {
        Some(Listen::Tcp { token, .. }) => {
            config.token = Some(token.clone());
            Daemon::start(&clients, config)
        }
        _ => Daemon::start(&clients, config),
    }
    .map_err(|e| {
        let hint = e.hint();
        Failure::new(e, hint, exit::USAGE)
    })?;
    let serving = serve(daemon.clone(), listen);
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => return result,
        _ = signals.recv() => daemon.stop(EndMode::Detach),
    }
    serving.await
}

enum Listen {
    Unix(PathBuf),
    Tcp { address: String, token: String },
}

impl Listen {
    fn parse(address: &str, token_file: Option<&Path>) -> Result<Self, Failure> {
        if let Some(path) = address.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let socket: std::net::SocketAddr = address
            .parse()
            .map_err(|_| usage("--listen takes unix:PATH or 127.0.0.1:PORT"))?;
        if !socket.ip().is_loopback() {
            return Err(usage(
                "--listen binds loopback addresses only (127.0.0.1:PORT)",
            ));
        }
        let file = token_file.ok_or_else(|| usage("--listen on TCP needs --token-file"))?;
        Ok(Listen::Tcp {
            address: address.to_owned(),
            token: read_or_create_token(file)?,
        })
    }
}

async fn serve(daemon: Arc<Daemon>, listen: Option<Listen>) -> Result<u8, Failure> {
    let io = |e: std::io::Error| Failure::new(e, None, exit::FAILURE);
    match listen {
        None => {
            session::serve_connection(daemon, tokio::io::stdin(), tokio::io::stdout()).await;
            Ok(exit::SUCCESS)
        }
        Some(Listen::Unix(path)) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            private_dir(dir)?;
            // A socket left by a dead daemon is replaced; a live daemon's is not taken over.
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(usage(&format!(
                    "another daemon listens on unix:{}",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).map_err(io)?;
            eprintln!("mfbatch serve: listening on unix:{}", path.display());
            accept_loop(daemon, || async {
                listener.accept().await.map(|(s, _)| s.into_split())
            })
            .await;
            let _ = std::fs::remove_file(&path);
            Ok(exit::SUCCESS)
        }
        Some(Listen::Tcp { address, .. }) => {
            let listener = tokio::net::TcpListener::bind(&address).await.map_err(io)?;
            let bound = listener.local_addr().map_err(io)?;
            eprintln!("mfbatch serve: listening on {bound}");
            accept_loop(daemon, || async {
                listener.accept().await.map(|(s, _)| s.into_split())
            })
            .await;
            Ok(exit::SUCCESS)
        }
    }
}

/// Serves connections until one asks for shutdown or a signal stops the daemon, then waits for
/// every connection to end.
async fn accept_loop<F, Fut, R, W>(daemon: Arc<Daemon>, accept: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(R, W)>>,
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut connections = JoinSet::new();
    let mut stop = daemon.stopping();
    loop {
        tokio::select! {
            accepted = accept() => match accepted {
                Ok((reader, writer)) => {
                    connections.spawn(session::serve_connection(daemon.clone(), reader, writer));
                }
                Err(e) => eprintln!("mfbatch serve: accept failed: {e}"),
            },
            Some(Ok(Some(mode))) = connections.join_next() => daemon.stop(mode),
            _ = stop.wait_for(Option::is_some) => break,
        }
    }
    while connections.join_next().await.is_some() {}
}

/// Creates the socket's directory private (0700), or refuses one others may enter.
fn private_dir(dir: &Path) -> Result<(), Failure> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| Failure::new(e, None, exit::FAILURE))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Failure::new(e, None, exit::FAILURE))?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(|e| Failure::new(e, None, exit::FAILURE))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(usage(&format!(
            "the socket's directory {} is open to others (mode {:o}); use a directory with mode 0700",
            dir.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// The shortest token a token file may hold (a generated one has 64 hex digits).
const MIN_TOKEN_CHARS: usize = 32;

/// The token in `file`, or a new one (32 random bytes from the OS, in hex) written to it.
fn read_or_create_token(file: &Path) -> Result<String, Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(meta) = std::fs::metadata(file) {
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(usage(&format!(
                "token file {} must have mode 0600",
                file.display()
            )));
        }
        let token =
            std::fs::read_to_string(file).map_err(|e| Failure::new(e, None, exit::FAILURE))?;
        let token = token.trim();
        // An empty token would let in a hello that sends none; a short one can be guessed.
        if token.chars().count() < MIN_TOKEN_CHARS {
            let what = if token.is_empty() {
                "is empty".to_owned()
            } else {
                format!("holds a token of {} characters", token.chars().count())
            };
            return Err(usage(&format!(
                "--token-file {} {what}: a token needs at least {MIN_TOKEN_CHARS} characters \
                 (remove the file and the daemon writes a new one)",
                file.display()
            )));
        }
        return Ok(token.to_owned());
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        Failure::new(
            std::io::Error::other(format!("no random bytes for the token: {e}")),
            None,
            exit::FAILURE,
        )
    })?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(token.as_bytes()).map(|()| f));
    out.as_mut().map_err(|e| {
        Failure::usage_message(&format!("cannot write {}: {e}", file.display()), None)
    })?;
    Ok(token)
}

fn default_state_dir() -> Result<PathBuf, Failure> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("mfbatch/serve"));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| usage("HOME is not set: pass --state-dir"))?;
    Ok(PathBuf::from(home).join(".local/state/mfbatch/serve"))
}

fn usage(message: &str) -> Failure {
    Failure::usage_message(message, None)
}
