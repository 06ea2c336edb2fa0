//! What one generation of tls-echo hands to the next: the session-ticket key, and the
//! certificate with its private key.
//!
//! The certificate travels too, rather than being read from `--cert`/`--key` files: it is made
//! at first start, so the example needs no files to run, and a client that trusted the first
//! generation's certificate (the test's, or `openssl s_client -CAfile`) must be shown the same
//! one by every later generation. The private key then never touches the disk; it moves over
//! the hand-off channel, a Unix socket between the old process and its own child. A server with
//! a certificate from a CA would read its files at each start instead and carry only the key.
//!
//! Format, version [`VERSION`]: the ticket key (32 bytes), the certificate's DER length (u32,
//! big-endian), the certificate (DER), then the private key (PKCS#8 DER) to the end.

use std::io;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::ticketer::{KEY_LEN, TicketKey};

/// The version of the state's format.
pub(crate) const VERSION: u32 = 1;

/// A generation's TLS identity and its ticket key.
#[derive(Debug)]
pub(crate) struct Carried {
    pub(crate) ticket_key: TicketKey,
    pub(crate) cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Carried {
    /// A first start's: a new ticket key, and a new self-signed certificate for `localhost` and
    /// 127.0.0.1. Returns the certificate as PEM too, for `--cert-out`.
    pub(crate) fn generate() -> io::Result<(Carried, String)> {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .map_err(|e| io::Error::other(format!("making a self-signed certificate: {e}")))?;
        let carried = Carried {
            ticket_key: TicketKey::generate()?,
            cert: made.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()),
        };
        Ok((carried, made.cert.pem()))
    }

    /// The private key, for rustls.
    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The state's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let cert_len = u32::try_from(self.cert.len()).expect("a certificate under 4 GiB");
        let mut bytes = Vec::with_capacity(KEY_LEN + 4 + self.cert.len() + 64);
        bytes.extend_from_slice(self.ticket_key.as_bytes());
        bytes.extend_from_slice(&cert_len.to_be_bytes());
        bytes.extend_from_slice(&self.cert);
        bytes.extend_from_slice(self.key.secret_pkcs8_der());
        bytes
    }

    /// Reads what [`encode`](Self::encode) wrote; the error says what does not fit.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Carried, String> {
        let (key, rest) = bytes.split_first_chunk::<KEY_LEN>().ok_or_else(|| {
            format!(
                "the TLS state has {} bytes, fewer than a {KEY_LEN}-byte ticket key",
                bytes.len()
            )
        })?;
        let (cert_len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or("the TLS state ends before the certificate's length")?;
        let cert_len = u32::from_be_bytes(*cert_len) as usize;
        if rest.len() <= cert_len {
            return Err(format!(
                "the TLS state announces a {cert_len}-byte certificate and a private key, but \
                 only {} bytes follow",
                rest.len()
            ));
        }
        let (cert, private_key) = rest.split_at(cert_len);
        Ok(Carried {
            ticket_key: TicketKey::from_bytes(*key),
            cert: CertificateDer::from(cert.to_vec()),
            key: PrivatePkcs8KeyDer::from(private_key.to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_as_written() {
        let (carried, _) = Carried::generate().unwrap();
        let bytes = carried.encode();
        let read = Carried::decode(&bytes).unwrap();
        assert_eq!(read.ticket_key.as_bytes(), carried.ticket_key.as_bytes());
        assert_eq!(read.cert, carried.cert);
        assert_eq!(read.key.secret_pkcs8_der(), carried.key.secret_pkcs8_der());
        let err = Carried::decode(&bytes[..KEY_LEN + 4 + 10]).unwrap_err();
        assert!(err.contains("announces"), "{err}");
    }
}
