//! tls-echo as real processes: a TLS client comes back after an upgrade and resumes its
//! session on the new process, because the session-ticket key was handed over as state.
#![cfg(target_os = "linux")]

mod support;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use support::{STEP, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const SERVER: &str = env!("CARGO_BIN_EXE_tls-echo");

/// The server with its certificate written to a file the client trusts.
struct TlsServer {
    server: Server,
    _dir: tempfile::TempDir,
    client: Arc<ClientConfig>,
}

impl TlsServer {
    async fn start(args: &[&str]) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let mut all = vec!["--cert-out", cert.to_str().unwrap()];
        all.extend_from_slice(args);
        let server = Server::start(SERVER, &all).await;
        let client = client_config(&cert);
        TlsServer {
            server,
            _dir: dir,
            client,
        }
    }

    /// A new TLS connection with the one client configuration, and so its one store of
    /// session tickets.
    async fn connect(&self) -> Conn {
        let tcp = TcpStream::connect(self.server.addr()).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(
            STEP,
            TlsConnector::from(self.client.clone()).connect(name, tcp),
        )
        .await
        .expect("the TLS handshake in time")
        .unwrap();
        Conn(BufReader::new(tls))
    }

    /// Connects, sends `line` and reads its answer (and with it the server's session tickets),
    /// closes; returns the handshake's kind and the answer.
    async fn exchange(&self, line: &str) -> (HandshakeKind, String) {
        let mut conn = self.connect().await;
        let kind = conn.kind();
        let answer = conn.ask(line).await;
        conn.close().await;
        (kind, answer)
    }
}

/// Trusts the certificate at `cert` and keeps rustls' default resumption: an in-memory store
/// of the tickets each server name sent.
fn client_config(cert: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).expect("the server wrote its certificate"))
        .unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// One TLS connection: lines out, answers in, each read bounded by [`STEP`].
struct Conn(BufReader<TlsStream<TcpStream>>);

impl Conn {
    fn kind(&self) -> HandshakeKind {
        self.0
            .get_ref()
            .get_ref()
            .1
            .handshake_kind()
            .expect("the handshake is over")
    }

    async fn ask(&mut self, line: &str) -> String {
        let stream = self.0.get_mut();
        stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(STEP, self.0.read_line(&mut answer))
            .await
            .expect("an answer in time")
            .unwrap();
        answer
    }

    /// Reads until the server ends the session: a clean end (close_notify) reads as 0 bytes,
    /// a connection cut without it as an error.
    async fn rest(&mut self) -> std::io::Result<usize> {
        let mut rest = Vec::new();
        tokio::time::timeout(STEP, self.0.read_to_end(&mut rest))
            .await
            .expect("the end of the session in time")
    }

    async fn close(mut self) {
        let _ = self.0.get_mut().shutdown().await;
    }
}

#[tokio::test]
async fn a_client_resumes_its_tls_session_on_the_new_process() {
    let tls = TlsServer::start(&[]).await;
    let first = tls.server.pid();
    let (kind, answer) = tls.exchange("hello").await;
    assert_eq!(kind, HandshakeKind::Full, "the first handshake");
    assert_eq!(answer, format!("hello {first}\n"));

    let old = tls.server.upgrade().await;
    assert_eq!(old, first);
    let new = tls.server.pid();
    let (kind, answer) = tls.exchange("again").await;
    assert_eq!(
        kind,
        HandshakeKind::Resumed,
        "the new process opens the ticket the old one issued"
    );
    assert_eq!(
        answer,
        format!("again {new}\n"),
        "answered by the new process"
    );
    let retired = tls.server.wait_exited(old).await;
    assert_eq!(retired.drain().unwrap().abandoned, 0);
}

/// The control: the same server and client, but each generation makes its own ticket key.
/// Within a generation sessions resume; across an upgrade they cannot.
#[tokio::test]
async fn with_a_fresh_key_per_generation_the_first_handshake_after_an_upgrade_is_full() {
    let tls = TlsServer::start(&["--ticket-key", "fresh"]).await;
    let (kind, _) = tls.exchange("hello").await;
    assert_eq!(kind, HandshakeKind::Full);
    let (kind, _) = tls.exchange("same process").await;
    assert_eq!(
        kind,
        HandshakeKind::Resumed,
        "resumption works within one process"
    );

    tls.server.upgrade().await;
    let (kind, answer) = tls.exchange("again").await;
    assert_eq!(
        kind,
        HandshakeKind::Full,
        "a ticket sealed under another key does not open"
    );
    assert_eq!(answer, format!("again {}\n", tls.server.pid()));
}

/// A session open at the upgrade is not moved: it ends cleanly (close_notify) at its line
/// boundary, and the client's reconnection resumes on the new process.
#[tokio::test]
async fn an_open_session_ends_cleanly_at_the_upgrade_and_resumes_on_the_new_process() {
    let tls = TlsServer::start(&[]).await;
    let mut conn = tls.connect().await;
    let first = tls.server.pid();
    assert_eq!(conn.ask("hello").await, format!("hello {first}\n"));

    let old = tls.server.upgrade().await;
    assert_eq!(
        conn.rest().await.expect("a clean end of the TLS session"),
        0,
        "nothing after the last answer"
    );
    conn.close().await;
    let (kind, answer) = tls.exchange("back").await;
    assert_eq!(kind, HandshakeKind::Resumed);
    assert_eq!(answer, format!("back {}\n", tls.server.pid()));
    let retired = tls.server.wait_exited(old).await;
    assert_eq!(retired.drain().unwrap().abandoned, 0);
}
