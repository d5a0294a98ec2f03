//! Mutual authentication with a shared cluster key, and the per-frame MAC.
//!
//! The replication port writes into memory, so nothing may reach the region from a peer that
//! has not proved it holds the cluster key. The handshake is a challenge-response in both
//! directions with fresh nonces, keyed BLAKE3 as the MAC:
//!
//! ```text
//! initiator (primary)                         responder (backup)
//!   ClientHello { magic, version, nonce_i }  ->
//!                                            <-  ServerHello { magic, version, nonce_r,
//!                                                  proof_r = MAC(K, "responder" | ni | nr) }
//!   ClientFinish { proof_i = MAC(K, "initiator" | ni | nr) }  ->
//! ```
//!
//! Both ends then derive one session key per direction from `K`, `nonce_i` and `nonce_r`; every
//! frame carries a MAC under that key over its header (with its sequence number) and payload,
//! so frames can be neither forged, replayed from another connection, nor reordered.
//!
//! ```
//! use nonstop_proto::auth::{ClusterKey, Initiator, Responder};
//! let key = ClusterKey::from_bytes([7; 32]);
//! let (initiator, hello) = Initiator::start(key.clone(), [1; 32]);
//! let (responder, server_hello) = Responder::on_client_hello(key, [2; 32], &hello).unwrap();
//! let (finish, initiator_keys) = initiator.on_server_hello(&server_hello).unwrap();
//! let responder_keys = responder.on_client_finish(&finish).unwrap();
//! assert_eq!(initiator_keys.send, responder_keys.recv);
//! assert_eq!(initiator_keys.recv, responder_keys.send);
//! ```

use thiserror::Error;

const HELLO_MAGIC: [u8; 4] = *b"NSH1";
const PROTOCOL_VERSION: u32 = 1;

/// Length of the initiator's first message.
pub const CLIENT_HELLO_LEN: usize = 40;
/// Length of the responder's answer.
pub const SERVER_HELLO_LEN: usize = 72;
/// Length of the initiator's proof.
pub const CLIENT_FINISH_LEN: usize = 32;
/// Length of the MAC that ends every frame.
pub const MAC_LEN: usize = 16;

/// Why a handshake failed. In every case the connection must be closed without reading on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// The peer does not speak nonstop's replication protocol.
    #[error("peer sent a bad handshake magic {0:02x?}: it is not a nonstop replication peer")]
    BadMagic([u8; 4]),
    /// The peer speaks another version of the protocol.
    #[error(
        "peer speaks replication protocol version {peer}, this node speaks {ours}: run the same nonstop version on both nodes"
    )]
    VersionMismatch {
        /// The version the peer announced.
        peer: u32,
        /// Our version.
        ours: u32,
    },
    /// The peer's proof does not match the cluster key.
    #[error(
        "peer failed authentication: it does not hold this cluster's key (check that both nodes use the same key file)"
    )]
    BadProof,
    /// A key could not be parsed.
    #[error("invalid cluster key: {0} (expected 64 hexadecimal characters, 32 bytes)")]
    BadKey(String),
}

/// The secret shared by all nodes of a cluster (32 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<secret>)")
    }
}

impl ClusterKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// Parses 64 hexadecimal characters; surrounding white space (a trailing newline in a key
    /// file) is ignored.
    pub fn from_hex(text: &str) -> Result<ClusterKey, AuthError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(AuthError::BadKey(format!("{} characters", text.len())));
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| AuthError::BadKey(format!("non-hex digit near position {}", 2 * i)))?;
        }
        Ok(ClusterKey(key))
    }

    /// The key as 64 lowercase hexadecimal characters (for writing a key file).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn proof(&self, label: &str, nonce_i: &[u8; 32], nonce_r: &[u8; 32]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(label.as_bytes());
        hasher.update(nonce_i);
        hasher.update(nonce_r);
        *hasher.finalize().as_bytes()
    }

    fn session_keys(&self, nonce_i: &[u8; 32], nonce_r: &[u8; 32]) -> (MacKey, MacKey) {
        (
            MacKey(self.proof("nonstop v1 session initiator to responder", nonce_i, nonce_r)),
            MacKey(self.proof("nonstop v1 session responder to initiator", nonce_i, nonce_r)),
        )
    }
}

/// A per-direction session key that MACs frames.
#[derive(Clone, PartialEq, Eq)]
pub struct MacKey([u8; 32]);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(<secret>)")
    }
}

impl MacKey {
    /// A key from raw bytes (tests and benchmarks; real keys come from the handshake).
    pub fn from_bytes(bytes: [u8; 32]) -> MacKey {
        MacKey(bytes)
    }

    /// The MAC of a frame: keyed BLAKE3 over the header and the payload, truncated to 16 bytes.
    pub fn mac(&self, header: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(header);
        hasher.update(payload);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..MAC_LEN]);
        out
    }

    /// Checks a MAC in constant time.
    pub fn verify(&self, header: &[u8], payload: &[u8], mac: &[u8]) -> bool {
        constant_time_eq(&self.mac(header, payload), mac)
    }
}

/// The two keys of an authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    /// MACs the frames this end sends.
    pub send: MacKey,
    /// Verifies the frames this end receives.
    pub recv: MacKey,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_magic_and_version(bytes: &[u8]) -> Result<(), AuthError> {
    let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
    if magic != HELLO_MAGIC {
        return Err(AuthError::BadMagic(magic));
    }
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != PROTOCOL_VERSION {
        return Err(AuthError::VersionMismatch { peer: version, ours: PROTOCOL_VERSION });
    }
    Ok(())
}

fn hello_prefix(out: &mut [u8]) {
    out[0..4].copy_from_slice(&HELLO_MAGIC);
    out[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
}

/// The connecting side (the primary) between its hello and the responder's answer.
#[derive(Debug)]
pub struct Initiator {
    key: ClusterKey,
    nonce_i: [u8; 32],
}

impl Initiator {
    /// Starts a handshake with a fresh random `nonce`; returns the hello to send.
    pub fn start(key: ClusterKey, nonce: [u8; 32]) -> (Initiator, [u8; CLIENT_HELLO_LEN]) {
        let mut hello = [0u8; CLIENT_HELLO_LEN];
        hello_prefix(&mut hello);
        hello[8..40].copy_from_slice(&nonce);
        (Initiator { key, nonce_i: nonce }, hello)
    }

    /// Checks the responder's proof; returns our proof to send and the session keys.
    pub fn on_server_hello(
        self,
        bytes: &[u8; SERVER_HELLO_LEN],
    ) -> Result<([u8; CLIENT_FINISH_LEN], SessionKeys), AuthError> {
        check_magic_and_version(bytes)?;
        let nonce_r: [u8; 32] = bytes[8..40].try_into().expect("32 bytes");
        let expected = self.key.proof("nonstop v1 responder proof", &self.nonce_i, &nonce_r);
        if !constant_time_eq(&expected, &bytes[40..72]) {
            return Err(AuthError::BadProof);
        }
        let finish = self.key.proof("nonstop v1 initiator proof", &self.nonce_i, &nonce_r);
        let (i2r, r2i) = self.key.session_keys(&self.nonce_i, &nonce_r);
        Ok((finish, SessionKeys { send: i2r, recv: r2i }))
    }
}

/// The accepting side (the backup) between its answer and the initiator's proof.
#[derive(Debug)]
pub struct Responder {
    key: ClusterKey,
    nonce_i: [u8; 32],
    nonce_r: [u8; 32],
}

impl Responder {
    /// Answers a hello with our fresh `nonce` and our proof of the key.
    pub fn on_client_hello(
        key: ClusterKey,
        nonce: [u8; 32],
        hello: &[u8; CLIENT_HELLO_LEN],
    ) -> Result<(Responder, [u8; SERVER_HELLO_LEN]), AuthError> {
        check_magic_and_version(hello)?;
        let nonce_i: [u8; 32] = hello[8..40].try_into().expect("32 bytes");
        let mut answer = [0u8; SERVER_HELLO_LEN];
        hello_prefix(&mut answer);
        answer[8..40].copy_from_slice(&nonce);
        answer[40..72].copy_from_slice(&key.proof("nonstop v1 responder proof", &nonce_i, &nonce));
        Ok((Responder { key, nonce_i, nonce_r: nonce }, answer))
    }

    /// Checks the initiator's proof; returns the session keys.
    pub fn on_client_finish(self, finish: &[u8; CLIENT_FINISH_LEN]) -> Result<SessionKeys, AuthError> {
        let expected = self.key.proof("nonstop v1 initiator proof", &self.nonce_i, &self.nonce_r);
        if !constant_time_eq(&expected, finish) {
            return Err(AuthError::BadProof);
        }
        let (i2r, r2i) = self.key.session_keys(&self.nonce_i, &self.nonce_r);
        Ok(SessionKeys { send: r2i, recv: i2r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_key_is_refused_by_both_sides() {
        let good = ClusterKey::from_bytes([1; 32]);
        let bad = ClusterKey::from_bytes([2; 32]);
        // A backup answering without the key cannot fool the primary.
        let (initiator, hello) = Initiator::start(good.clone(), [3; 32]);
        let (_, answer) = Responder::on_client_hello(bad.clone(), [4; 32], &hello).unwrap();
        assert_eq!(initiator.on_server_hello(&answer).unwrap_err(), AuthError::BadProof);
        // A primary without the key cannot get past the backup.
        let (_, hello) = Initiator::start(bad, [3; 32]);
        let (responder, _) = Responder::on_client_hello(good, [4; 32], &hello).unwrap();
        assert_eq!(responder.on_client_finish(&[0; 32]).unwrap_err(), AuthError::BadProof);
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let key = ClusterKey::from_bytes([1; 32]);
        let mut hello = [0u8; CLIENT_HELLO_LEN];
        hello[..4].copy_from_slice(b"GET ");
        assert!(matches!(Responder::on_client_hello(key.clone(), [0; 32], &hello), Err(AuthError::BadMagic(_))));
        let (_, mut hello) = Initiator::start(key.clone(), [0; 32]);
        hello[4] = 9;
        assert!(matches!(
            Responder::on_client_hello(key, [0; 32], &hello),
            Err(AuthError::VersionMismatch { peer: 9, .. })
        ));
    }

    #[test]
    fn key_hex_round_trip_and_errors() {
        let key = ClusterKey::from_bytes([0xab; 32]);
        assert_eq!(ClusterKey::from_hex(&format!("{}\n", key.to_hex())).unwrap(), key);
        assert!(ClusterKey::from_hex("abc").is_err());
        assert!(ClusterKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
