//! A private, throwaway Postgres cluster started from the machine's own binaries
//! (`/usr/lib/postgresql/*/bin`, or `PHOENIX_PG_BIN`), for `cargo test` and the
//! local demo when `DATABASE_URL` is not set.
//!
//! The cluster lives in a temporary directory and listens on a free loopback port.
//! It is owned through a pipe: a small `sh` wrapper starts `postgres` and waits on
//! its stdin; when the owner drops the handle *or dies in any way* the pipe closes,
//! and the wrapper stops the server and deletes the directory. Nothing is left
//! behind, even after a SIGKILL of the test runner.
//!
//! Postgres refuses to run as root; when running as root the cluster runs as the
//! `postgres` system user (present wherever the server package is installed).

use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a throwaway cluster could not be started; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("throwaway Postgres: {0}")]
pub struct ThrowawayError(String);

/// A running throwaway cluster. Dropping it stops the server and removes its files.
pub struct ThrowawayPostgres {
    port: u16,
    owner_pipe: Option<ChildStdin>,
    wrapper: Child,
    bin: PathBuf,
    root: PathBuf,
    identity: Option<(u32, u32)>,
    settings: Vec<String>,
}

/// The directory holding `initdb` and `postgres`: `PHOENIX_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir() -> Result<PathBuf, ThrowawayError> {
    if let Ok(dir) = std::env::var("PHOENIX_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| ThrowawayError(no_postgres_hint()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| ThrowawayError(no_postgres_hint()))
}

fn no_postgres_hint() -> String {
    "no Postgres server binaries under /usr/lib/postgresql/*/bin; install them (apt-get install -y postgresql) \
     or set DATABASE_URL to an existing server"
        .into()
}

// The server running at the end may not be the first one (see `stop_server` and
// `start_server`): the one to stop is the one `postmaster.pid` names.
const WRAPPER: &str = r#"
bin=$0; data=$1; port=$2; root=$3; shift 3
"$bin/postgres" -D "$data" -p "$port" -k "$root" -h 127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections=500 -c shared_buffers=128MB "$@" >>"$root/postgres.log" 2>&1 &
read -r _
pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -INT "$pid" 2>/dev/null
  # The server removes its pid file as it exits (a child of ours stays a zombie).
  n=0
  while [ -e "$data/postmaster.pid" ] && kill -0 "$pid" 2>/dev/null && [ $n -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
  done
fi
rm -rf "$root"
"#;

// Starts the server again on the same directory and port, detached; the wrapper
// above still owns the cluster.
const RESTART: &str = r#"
bin=$0; data=$1; port=$2; root=$3; shift 3
setsid "$bin/postgres" -D "$data" -p "$port" -k "$root" -h 127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections=500 -c shared_buffers=128MB "$@" >>"$root/postgres.log" 2>&1 </dev/null &
"#;

/// The uid and gid to run Postgres as: ours, or the `postgres` user's when we are root.
fn server_identity() -> Result<Option<(u32, u32)>, ThrowawayError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam reads a static buffer; we copy the ids out immediately.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(ThrowawayError(
            "running as root, and there is no `postgres` user to run the server as; create one (useradd postgres) \
             or set DATABASE_URL"
                .into(),
        ));
    }
    // SAFETY: entry is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

fn as_server(command: &mut Command, identity: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = identity {
        command.uid(uid).gid(gid);
    }
    command
}

fn free_port() -> Result<u16, ThrowawayError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ThrowawayError(format!("no free port: {e}")))?;
    Ok(listener
        .local_addr()
        .map_err(|e| ThrowawayError(e.to_string()))?
        .port())
}

impl ThrowawayPostgres {
    /// Creates and starts a cluster; blocks until it accepts connections (a few
    /// seconds). The superuser is `phoenix`, trusted on loopback.
    pub fn start() -> Result<Self, ThrowawayError> {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with extra server settings, e.g.
    /// `("shared_preload_libraries", "pg_stat_statements")` for a benchmark.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Self, ThrowawayError> {
        let bin = find_bin_dir()?;
        let identity = server_identity()?;
        let root = tempfile::Builder::new()
            .prefix("phoenix-pg-")
            .tempdir()
            .map_err(|e| ThrowawayError(format!("cannot create a temporary directory: {e}")))?
            .keep();
        let data = root.join("data");
        if let Some((uid, gid)) = identity {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).map_err(|e| {
                ThrowawayError(format!(
                    "cannot hand {} to the postgres user: {e}",
                    root.display()
                ))
            })?;
        }
        let initdb = as_server(&mut Command::new(bin.join("initdb")), identity)
            .args([
                "-U",
                "phoenix",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ThrowawayError(format!("cannot run initdb: {e}")))?;
        if !initdb.status.success() {
            let _ = std::fs::remove_dir_all(&root);
            return Err(ThrowawayError(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            )));
        }
        let port = free_port()?;
        let settings: Vec<String> = settings
            .iter()
            .flat_map(|(name, value)| ["-c".to_string(), format!("{name}={value}")])
            .collect();
        let wrapper = as_server(&mut Command::new("sh"), identity)
            .arg("-c")
            .arg(WRAPPER)
            .arg(&bin)
            .arg(&data)
            .arg(port.to_string())
            .arg(&root)
            .args(&settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ThrowawayError(format!("cannot start postgres: {e}")))?;
        let mut cluster = ThrowawayPostgres {
            port,
            owner_pipe: None,
            wrapper,
            bin: bin.clone(),
            root: root.clone(),
            identity,
            settings,
        };
        cluster.owner_pipe = cluster.wrapper.stdin.take();
        cluster.wait_ready(&bin, &root)?;
        Ok(cluster)
    }

    /// Stops the server (a fast shutdown: sessions are ended, clients see their
    /// connections close and new ones refused) and waits until it is gone. The
    /// files stay; [`start_server`](Self::start_server) brings it back.
    pub fn stop_server(&self) -> Result<(), ThrowawayError> {
        let pid_file = self.root.join("data").join("postmaster.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok())
            .ok_or_else(|| ThrowawayError(format!("no server running ({})", pid_file.display())))?;
        // SAFETY: kill(2) on the postmaster's pid, read from its own pid file.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The server removes its pid file as it exits (it may stay a zombie of the
        // wrapper, so the pid alone says nothing).
        while pid_file.exists() {
            if Instant::now() > deadline {
                return Err(ThrowawayError("the server did not stop within 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts the server again after [`stop_server`](Self::stop_server), on the same
    /// port and files; blocks until it accepts connections.
    pub fn start_server(&mut self) -> Result<(), ThrowawayError> {
        let status = as_server(&mut Command::new("sh"), self.identity)
            .arg("-c")
            .arg(RESTART)
            .arg(&self.bin)
            .arg(self.root.join("data"))
            .arg(self.port.to_string())
            .arg(&self.root)
            .args(&self.settings)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| ThrowawayError(format!("cannot start postgres again: {e}")))?;
        if !status.success() {
            return Err(ThrowawayError(format!("restarting postgres: {status}")));
        }
        let (bin, root) = (self.bin.clone(), self.root.clone());
        self.wait_ready(&bin, &root)
    }

    /// Starts a streaming replica of this cluster (`pg_basebackup -R`, the same
    /// server binaries) on a port of its own, in `<root>/replica`, detached; blocks
    /// until it accepts connections. Returns its port.
    pub fn start_replica(&self) -> Result<u16, ThrowawayError> {
        let replica = self.root.join("replica");
        let backup = as_server(
            &mut Command::new(self.bin.join("pg_basebackup")),
            self.identity,
        )
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "phoenix",
        ])
        .args(["-X", "stream", "-R", "--no-sync", "-D"])
        .arg(&replica)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ThrowawayError(format!("cannot run pg_basebackup: {e}")))?;
        if !backup.status.success() {
            return Err(ThrowawayError(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&backup.stderr)
            )));
        }
        let port = free_port()?;
        self.run_detached(&replica, port)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.is_ready(port) {
            if Instant::now() > deadline {
                return Err(ThrowawayError(
                    "the replica did not start within 30 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(port)
    }

    /// Fails over to the replica [`start_replica`](Self::start_replica) made,
    /// behind this cluster's address: with this server stopped
    /// ([`stop_server`](Self::stop_server)), the replica is promoted, then moved to
    /// this cluster's port (its files become the cluster's; the old primary's are
    /// kept aside). Blocks until it accepts connections as the primary.
    pub fn fail_over_to_replica(&mut self) -> Result<(), ThrowawayError> {
        let replica = self.root.join("replica");
        let pg_ctl = |args: &[&str]| -> Result<(), ThrowawayError> {
            let out = as_server(&mut Command::new(self.bin.join("pg_ctl")), self.identity)
                .args(args)
                .arg("-D")
                .arg(&replica)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| ThrowawayError(format!("cannot run pg_ctl: {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(ThrowawayError(format!(
                    "pg_ctl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )))
            }
        };
        pg_ctl(&["promote", "-w"])?;
        pg_ctl(&["stop", "-m", "fast", "-w"])?;
        let data = self.root.join("data");
        let aside = self.root.join("old-primary");
        std::fs::rename(&data, &aside)
            .and_then(|()| std::fs::rename(&replica, &data))
            .map_err(|e| ThrowawayError(format!("cannot move the replica in place: {e}")))?;
        self.start_server()
    }

    fn run_detached(&self, data: &Path, port: u16) -> Result<(), ThrowawayError> {
        let status = as_server(&mut Command::new("sh"), self.identity)
            .arg("-c")
            .arg(RESTART)
            .arg(&self.bin)
            .arg(data)
            .arg(port.to_string())
            .arg(&self.root)
            .args(&self.settings)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| ThrowawayError(format!("cannot start postgres: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(ThrowawayError(format!("starting postgres: {status}")))
        }
    }

    fn is_ready(&self, port: u16) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Lets clients from `cidr` (say a test's network namespace) connect without a
    /// password, like loopback ones, and reloads the server's configuration.
    pub fn trust_network(&self, cidr: &str) -> Result<(), ThrowawayError> {
        use std::io::Write;
        let hba = self.root.join("data").join("pg_hba.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&hba)
            .map_err(|e| ThrowawayError(format!("{}: {e}", hba.display())))?;
        writeln!(file, "host all all {cidr} trust")
            .map_err(|e| ThrowawayError(format!("{}: {e}", hba.display())))?;
        let postmaster = self
            .server_pids()
            .first()
            .copied()
            .ok_or_else(|| ThrowawayError("no server running".into()))?;
        // SAFETY: SIGHUP to the postmaster: reload its configuration.
        unsafe { libc::kill(postmaster, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Every process of the running server (the postmaster and its children),
    /// for a test that freezes it with SIGSTOP and thaws it with SIGCONT.
    pub fn server_pids(&self) -> Vec<i32> {
        let pid_file = self.root.join("data").join("postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent pid is the second field after the command's closing parenthesis.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    fn wait_ready(&mut self, bin: &Path, root: &Path) -> Result<(), ThrowawayError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            let exited = self.wrapper.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                let mut log = String::new();
                let _ = std::fs::File::open(root.join("postgres.log"))
                    .and_then(|mut f| f.read_to_string(&mut log));
                return Err(ThrowawayError(format!("postgres did not start: {log}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://phoenix@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        // Closing the pipe tells the wrapper to stop the server and clean up.
        drop(self.owner_pipe.take());
        let _ = self.wrapper.wait();
    }
}
