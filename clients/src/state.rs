//! The CLIs' local state: one session file per role, so consecutive invocations of
//! `market-seller` (or `market-buyer`) stay logged in.
//!
//! The state directory is `--state-dir`, else `$MARKET_STATE_DIR`, else `market/` under the
//! user's state directory (`$XDG_STATE_HOME`, `~/.local/state` on Linux), else under the user's
//! data directory. It is created with mode 0700. The session of a role is
//! `<dir>/<role>.session.json`, `{"token": "...", "user_id": 7}`, written atomically with mode
//! 0600 (it is a bearer credential). `logout` deletes it.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which CLI a session belongs to (tokens are role-scoped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `market-seller`.
    Seller,
    /// `market-buyer`.
    Buyer,
}

impl Role {
    /// `"seller"` or `"buyer"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Seller => "seller",
            Role::Buyer => "buyer",
        }
    }
}

/// A saved login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    /// The bearer token.
    pub token: String,
    /// The seller or buyer id the token belongs to.
    pub user_id: u64,
}

/// The CLIs' state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The state directory at `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default directory: `market` under the user's state directory, or under the data
    /// directory where there is no state directory (macOS, Windows); `None` if neither exists.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::state_dir()
            .or_else(dirs::data_dir)
            .map(|d| d.join("market"))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the session of `role` is kept.
    pub fn session_path(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.session.json", role.as_str()))
    }

    /// The saved session of `role`, `None` if there is none.
    pub fn load(&self, role: Role) -> io::Result<Option<SavedSession>> {
        let path = self.session_path(role);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e} (delete it and log in again)", path.display()),
            )
        })
    }

    /// Saves the session of `role` (directory 0700, file 0600, atomically replaced).
    pub fn save(&self, role: Role, session: &SavedSession) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let path = self.session_path(role);
        let tmp = self.dir.join(format!(
            ".{}.session.{}.tmp",
            role.as_str(),
            std::process::id()
        ));
        let text = serde_json::to_string(session).map_err(io::Error::other)?;
        let result =
            write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, &path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Deletes the session of `role`; true if there was one.
    pub fn remove(&self, role: Role) -> io::Result<bool> {
        match std::fs::remove_file(self.session_path(role)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Writes a new file readable and writable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // The mode above is filtered by the umask; make sure, and fix a leftover file.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_privately_per_role() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path().join("a/b/market"));
        assert_eq!(state.load(Role::Seller).unwrap(), None);
        let s = SavedSession {
            token: "tok".into(),
            user_id: 7,
        };
        state.save(Role::Seller, &s).unwrap();
        assert_eq!(state.load(Role::Seller).unwrap(), Some(s.clone()));
        assert_eq!(state.load(Role::Buyer).unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&state.session_path(Role::Seller)), 0o600);
            assert_eq!(mode(state.dir()), 0o700);
        }
        let s2 = SavedSession {
            token: "tok2".into(),
            user_id: 8,
        };
        state.save(Role::Seller, &s2).unwrap();
        assert_eq!(state.load(Role::Seller).unwrap(), Some(s2));
        assert!(state.remove(Role::Seller).unwrap());
        assert!(!state.remove(Role::Seller).unwrap());
        assert_eq!(state.load(Role::Seller).unwrap(), None);
        std::fs::write(state.session_path(Role::Buyer), "garbage").unwrap();
        assert!(state.load(Role::Buyer).is_err());
    }
}
