//! What the seller and buyer clients share: the replica pool, the session token, JSON in and
//! out, and percent-encoding of path and query components.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Mutex;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{ClientError, Replicas};

/// The constructors and session accessors every role's client has, over its `core: Core`
/// field (`$role` names the server in the docs, e.g. `"seller"`).
macro_rules! client_common {
    ($client:ident, $role:literal) => {
        impl $client {
            #[doc = concat!("A client of the ", $role, " server replicas at `urls` (`http://IP:port`).")]
            pub fn new<I, S>(urls: I) -> Result<Self, ClientError>
            where
                I: IntoIterator<Item = S>,
                S: AsRef<str>,
            {
                Replicas::new(urls).map(Self::from_replicas)
            }

            #[doc = concat!("Like [`", stringify!($client), "::new`], with tunables.")]
            pub fn with_config<I, S>(urls: I, config: ClientConfig) -> Result<Self, ClientError>
            where
                I: IntoIterator<Item = S>,
                S: AsRef<str>,
            {
                Replicas::with_config(urls, config).map(Self::from_replicas)
            }

            /// A client over an existing pool (shared connections and preferred replica).
            pub fn from_replicas(replicas: Replicas) -> Self {
                Self {
                    core: Core::new(replicas),
                }
            }

            #[doc = concat!("The client with a session token restored (e.g. one saved from [`", stringify!($client), "::token`]).")]
            pub fn with_token(self, token: impl AsRef<str>) -> Result<Self, ClientError> {
                self.core.set_token(Some(token.as_ref()))?;
                Ok(self)
            }

            /// Replaces (or with `None` forgets) the session token, without telling any server.
            pub fn set_token(&self, token: Option<&str>) -> Result<(), ClientError> {
                self.core.set_token(token)
            }

            /// The current session token, if logged in.
            pub fn token(&self) -> Option<String> {
                self.core.token()
            }

            /// The replica pool.
            pub fn replicas(&self) -> &Replicas {
                &self.core.replicas
            }
        }
    };
}
pub(crate) use client_common;

/// A replica pool plus the session token of one logged-in user (or none).
pub(crate) struct Core {
    pub(crate) replicas: Replicas,
    /// The token and its ready-made `Authorization` header value.
    session: Mutex<Option<(String, HeaderValue)>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("replicas", &self.replicas)
            .field("logged_in", &self.token().is_some())
            .finish()
    }
}

impl Core {
    pub(crate) fn new(replicas: Replicas) -> Self {
        Self {
            replicas,
            session: Mutex::new(None),
        }
    }

    pub(crate) fn token(&self) -> Option<String> {
        self.lock().as_ref().map(|(t, _)| t.clone())
    }

    pub(crate) fn set_token(&self, token: Option<&str>) -> Result<(), ClientError> {
        let session = match token {
            None => None,
            Some(t) => {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ClientError::InvalidArgument(
                        "a token is non-empty visible ASCII".into(),
                    ));
                }
                let mut header = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
                header.set_sensitive(true);
                Some((t.to_owned(), header))
            }
        };
        *self.lock() = session;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, HeaderValue)>> {
        // The guarded value is always consistent; a panic elsewhere cannot poison its meaning.
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn auth(&self, needed: bool) -> Result<Option<HeaderValue>, ClientError> {
        if !needed {
            return Ok(None);
        }
        match &*self.lock() {
            Some((_, header)) => Ok(Some(header.clone())),
            None => Err(ClientError::NotLoggedIn),
        }
    }

    /// Sends a request and decodes its JSON answer.
    pub(crate) async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        auth: bool,
    ) -> Result<T, ClientError> {
        let answer = self.send(method, path, body, auth).await?;
        Ok(serde_json::from_slice(&answer)?)
    }

    /// Sends a request whose answer has no body (204).
    pub(crate) async fn empty<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        auth: bool,
    ) -> Result<(), ClientError> {
        self.send(method, path, body, auth).await.map(drop)
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        auth: bool,
    ) -> Result<Bytes, ClientError> {
        let token = self.auth(auth)?;
        let body = match body {
            Some(b) => Some(Bytes::from(serde_json::to_vec(b)?)),
            None => None,
        };
        let answer = self
            .replicas
            .call(method, path, body, token.as_ref())
            .await?;
        Ok(answer.body)
    }
}

/// No request body (a type for the `B` parameter of [`Core::json`] and [`Core::empty`]).
pub(crate) const NO_BODY: Option<&()> = None;

/// Percent-encodes `s` for use as one path segment or one query value: everything but
/// RFC 3986 unreserved characters is escaped.
pub(crate) fn encode(s: &str) -> Cow<'_, str> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if s.bytes().all(unreserved) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if unreserved(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_only_what_must_be() {
        assert!(matches!(encode("3-17"), Cow::Borrowed("3-17")));
        assert_eq!(encode("a/b c?&é"), "a%2Fb%20c%3F%26%C3%A9");
    }

    #[test]
    fn tokens_must_fit_a_header() {
        let core = Core::new(Replicas::new(["http://127.0.0.1:1"]).unwrap());
        assert!(core.set_token(Some("bad token")).is_err());
        assert!(core.set_token(Some("")).is_err());
        core.set_token(Some("abc.DEF-123")).unwrap();
        assert_eq!(core.token().as_deref(), Some("abc.DEF-123"));
        assert_eq!(core.auth(true).unwrap().unwrap(), "Bearer abc.DEF-123");
        core.set_token(None).unwrap();
        assert!(matches!(core.auth(true), Err(ClientError::NotLoggedIn)));
        assert!(core.auth(false).unwrap().is_none());
    }
}
