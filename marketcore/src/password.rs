//! Password hashing with Argon2id.
//!
//! Hashing is deliberately slow, so it happens on the frontend (in the
//! [`Market`](crate::market::Market), on a blocking thread), never inside a state machine's
//! apply: the replicated command carries the finished PHC string (which includes the random
//! salt and the parameters), and every replica stores the same bytes. Verification reads the
//! parameters from the stored PHC string, so changing [`PasswordParams`] affects only new
//! hashes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

use crate::error::MarketError;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl PasswordParams {
    /// OWASP's recommended Argon2id setting: 19 MiB, 2 iterations, 1 lane.
    pub const PRODUCTION: Self = Self {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    /// The cheapest setting Argon2 accepts: for tests only.
    pub const TESTING: Self = Self {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    };

    fn hasher(&self) -> Result<Argon2<'static>, MarketError> {
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, None)
            .map_err(|e| MarketError::Unavailable(format!("argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for PasswordParams {
    fn default() -> Self {
        Self::PRODUCTION
    }
}

/// Chooses a random 16-byte salt (before proposing; the salt travels inside the PHC string).
pub fn random_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    salt
}

/// Hashes `password` with `salt` into a PHC string (`$argon2id$v=19$m=...`).
pub fn hash(
    password: &str,
    salt: &[u8; 16],
    params: PasswordParams,
) -> Result<String, MarketError> {
    let salt =
        SaltString::encode_b64(salt).map_err(|e| MarketError::Unavailable(format!("salt: {e}")))?;
    let hash = params
        .hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| MarketError::Unavailable(format!("argon2: {e}")))?;
    Ok(hash.to_string())
}

/// True when `password` matches the PHC string `phc`. A malformed `phc` never matches.
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let salt = random_salt();
        let phc = hash("correct horse", &salt, PasswordParams::TESTING).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert!(verify("correct horse", &phc));
        assert!(!verify("wrong horse", &phc));
        assert!(!verify("correct horse", "not a hash"));
        // Same salt, same hash: the hash is a pure function of its inputs.
        assert_eq!(
            phc,
            hash("correct horse", &salt, PasswordParams::TESTING).unwrap()
        );
        assert_ne!(
            phc,
            hash("correct horse", &random_salt(), PasswordParams::TESTING).unwrap()
        );
        assert!(PasswordParams::PRODUCTION.hasher().is_ok());
    }
}
