//! Session tickets sealed under one key that this process can hand to the next generation.
//!
//! rustls' own ticketers cannot be carried: their keys are random, private and rotated, and
//! the ring one also refuses any ticket longer than the longest it has issued itself, which in
//! a new process is none. This one seals each ticket with ChaCha20-Poly1305 (ring's, the
//! provider rustls runs on here) under a 32-byte [`TicketKey`] that the example saves as state,
//! so a ticket issued by any generation opens in the next.
//!
//! A ticket is `nonce (12 bytes) || ciphertext || tag (16 bytes)`, with a fixed label as
//! associated data. There is one key and no rotation: a production server would carry the
//! current and the previous key and rotate on a schedule, so that a stolen key does not open
//! every ticket ever issued.

use std::fmt;
use std::io;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// The length of a ticket key.
pub(crate) const KEY_LEN: usize = 32;
/// Bound to every ticket, so that a ticket sealed for another purpose with the same key does
/// not open here.
const LABEL: &[u8] = b"tls-echo session ticket v1";
/// How long a client may keep a ticket, in seconds: a hint to clients (TLS 1.3 caps it at 7
/// days).
const LIFETIME_SECS: u32 = 12 * 60 * 60;

/// The secret every ticket is sealed under.
#[derive(Clone)]
pub(crate) struct TicketKey([u8; KEY_LEN]);

impl TicketKey {
    /// A new random key.
    pub(crate) fn generate() -> io::Result<TicketKey> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| io::Error::other("the system's random source failed"))?;
        Ok(TicketKey(key))
    }

    /// The key of these bytes.
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> TicketKey {
        TicketKey(bytes)
    }

    /// The key's bytes, to carry to the next generation.
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(..)") // never the secret itself
    }
}

/// Seals and opens session tickets under one [`TicketKey`].
pub(crate) struct Ticketer {
    key: LessSafeKey,
    random: SystemRandom,
}

impl Ticketer {
    pub(crate) fn new(key: &TicketKey) -> Ticketer {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key.as_bytes())
            .expect("a 32-byte key is what ChaCha20-Poly1305 takes");
        Ticketer {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        }
    }
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("aead", &"ChaCha20-Poly1305")
            .field("lifetime_secs", &LIFETIME_SECS)
            .finish_non_exhaustive()
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // Random nonces: 96 bits make a collision unlikely for far more tickets than one key
        // seals here.
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NONCE_LEN + plain.len() + CHACHA20_POLY1305.tag_len());
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(LABEL),
                &mut ticket[NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        // The ticket comes from the client: anything that does not open is refused, and the
        // handshake falls back to a full one.
        let nonce = Nonce::try_assume_unique_for_key(ticket.get(..NONCE_LEN)?).ok()?;
        let mut sealed = ticket.get(NONCE_LEN..)?.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(LABEL), &mut sealed)
            .ok()?
            .len();
        sealed.truncate(plain_len);
        Some(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_under_the_same_key_only() {
        let key = TicketKey::generate().unwrap();
        let ticket = Ticketer::new(&key).encrypt(b"session").unwrap();
        let carried = TicketKey::from_bytes(*key.as_bytes());
        assert_eq!(
            Ticketer::new(&carried).decrypt(&ticket).as_deref(),
            Some(&b"session"[..])
        );
        let other = TicketKey::generate().unwrap();
        assert_eq!(Ticketer::new(&other).decrypt(&ticket), None);
        assert_eq!(Ticketer::new(&key).decrypt(&ticket[..5]), None);
    }
}
