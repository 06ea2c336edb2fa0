//! The load engine against small misbehaving loopback servers: each kind of failure must be
//! seen as that kind, and a clean close between requests as a reconnect, or "0 failed" means
//! nothing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Client, Failure, Load, LoadReport};

/// A loopback server that stops accepting when dropped.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves every connection with `reply` until dropped.
async fn serve(reply: &'static str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0; 1024];
                // One request each: read its head, answer, and close (half-close first).
                if conn.read(&mut request).await.unwrap_or(0) > 0 {
                    let _ = conn.write_all(reply.as_bytes()).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    Server { addr, task }
}

/// Two clients of kind `client` until they have seen enough to classify (20 events), for 10 s
/// at most.
async fn load(client: Client, addr: SocketAddr) -> LoadReport<()> {
    let running = Load::none()
        .clients(client, 2)
        .answers_name_pid()
        .record_timings()
        .request_timeout(Duration::from_secs(2))
        .start(addr);
    let live = running.live().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while live.answered() + live.failures() + live.reconnects() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await
}

const OK_THEN_CLOSE: &str =
    "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 14\r\n\r\nhello from 123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_closes_the_connection_is_a_reconnect() {
    let server = serve(OK_THEN_CLOSE).await;
    let report = load(Client::KeepAliveHttp, server.addr).await;
    assert_eq!(report.failures(), 0, "{report}");
    assert!(report.succeeded() > 0, "{report}");
    assert!(report.reconnects() > 0, "{report}");
    assert_eq!(report.pids(), &BTreeSet::from([123]));
    assert_eq!(report.timings().len() as u64, report.succeeded());
    let report = load(Client::ShortHttp, server.addr).await;
    assert_eq!(report.failures(), 0, "{report}");
    assert_eq!(
        report.reconnects(),
        0,
        "a short connection's end is no reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_without_an_answer_is_empty() {
    let server = serve("").await;
    for client in [Client::ShortHttp, Client::KeepAliveHttp] {
        let report = load(client, server.addr).await;
        assert!(report.failures_of(Failure::Empty) > 0, "{client}: {report}");
        assert_eq!(report.failures(), report.failures_of(Failure::Empty));
        assert_eq!(report.succeeded(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_an_answer_is_torn_and_an_error_status_is_counted() {
    let half = serve("HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\nhello").await;
    let report = load(Client::ShortHttp, half.addr).await;
    assert!(report.failures_of(Failure::Torn) > 0, "{report}");
    let error =
        serve("HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
            .await;
    let report = load(Client::ShortHttp, error.addr).await;
    assert!(report.failures_of(Failure::Status) > 0, "{report}");
    assert_eq!(report.failures(), report.failures_of(Failure::Status));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_names_no_pid_is_torn() {
    let server =
        serve("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello").await;
    let report = load(Client::ShortHttp, server.addr).await;
    assert!(report.failures_of(Failure::Torn) > 0, "{report}");
    assert_eq!(report.failures(), report.failures_of(Failure::Torn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_refused() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for client in [Client::LongLines, Client::H2] {
        let report = load(client, addr).await;
        assert!(report.failures_of(Failure::Refused) > 0, "{report}");
        assert_eq!(report.failures(), report.failures_of(Failure::Refused));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_session_closed_at_a_boundary_is_a_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers three lines, then half-closes and waits for the client to close.
    let server = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                for _ in 0..3 {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let reply = format!("{} 77\n", line.trim_end());
                    let _ = conn.get_mut().write_all(reply.as_bytes()).await;
                }
                let _ = conn.get_mut().shutdown().await;
                let mut rest = Vec::new();
                let _ = conn.read_to_end(&mut rest).await;
            });
        }
    });
    let report = load(Client::LongLines, addr).await;
    server.abort();
    assert_eq!(report.failures(), 0, "{report}");
    assert!(report.reconnects() > 0, "{report}");
    assert_eq!(report.pids(), &BTreeSet::from([77]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_session_closed_before_its_first_answer_is_empty() {
    let server = serve("").await;
    for client in [Client::ShortLines, Client::LongLines] {
        let report = load(client, server.addr).await;
        assert!(report.failures_of(Failure::Empty) > 0, "{client}: {report}");
        assert_eq!(report.failures(), report.failures_of(Failure::Empty));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_waits_for_no_more_than_the_exchange_in_flight() {
    // A server that accepts and never answers: each exchange ends by its timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let running = Load::none()
        .keep_alive_http(2)
        .request_timeout(Duration::from_millis(300))
        .start(addr);
    let report = tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("stopping a load against a silent server did not end within 10 s");
    drop(listener);
    assert_eq!(report.succeeded(), 0);
    assert_eq!(report.failures(), report.failures_of(Failure::Timeout));
}

/// A minimal HTTP/2 server, in raw frames: on each connection it answers stream 1 with
/// `hello from 5`, and meets the next request with a graceful GOAWAY (`NO_ERROR`) whose last
/// stream id is 1, so that request was not processed; then it closes.
async fn serve_h2_refusing_the_second_request() -> Server {
    const SETTINGS: u8 = 4;
    const HEADERS: u8 = 1;
    const DATA: u8 = 0;
    const GOAWAY: u8 = 7;
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut preface = [0; 24];
                conn.read_exact(&mut preface).await?;
                conn.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
                loop {
                    let mut head = [0; 9];
                    conn.read_exact(&mut head).await?;
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & !(1 << 31);
                    let mut payload = vec![0; len];
                    conn.read_exact(&mut payload).await?;
                    match head[3] {
                        SETTINGS if head[4] & 1 == 0 => {
                            conn.write_all(&frame(SETTINGS, 1, 0, &[])).await?;
                        }
                        HEADERS if stream == 1 => {
                            // `:status: 200` is entry 8 of HPACK's static table; END_HEADERS,
                            // then the body with END_STREAM.
                            conn.write_all(&frame(HEADERS, 4, 1, &[0x88])).await?;
                            conn.write_all(&frame(DATA, 1, 1, b"hello from 5")).await?;
                        }
                        HEADERS => {
                            let mut goaway = 1u32.to_be_bytes().to_vec();
                            goaway.extend(0u32.to_be_bytes());
                            conn.write_all(&frame(GOAWAY, 0, 0, &goaway)).await?;
                            conn.shutdown().await?;
                            let mut rest = Vec::new();
                            conn.read_to_end(&mut rest).await?;
                            return Ok::<_, std::io::Error>(());
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    Server { addr, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_refused_by_a_graceful_goaway_is_a_reconnect() {
    let server = serve_h2_refusing_the_second_request().await;
    let report = load(Client::H2, server.addr).await;
    assert_eq!(report.failures(), 0, "{report}");
    assert!(report.succeeded() > 0, "{report}");
    assert!(report.reconnects() > 0, "{report}");
    assert_eq!(report.pids(), &BTreeSet::from([5]));
}

/// What a WebSocket server does after it has answered three messages.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Sends a close frame, 1001 going away, without reading the next message.
    GoesAway,
    /// Reads the next message, sends half an answer, and closes the connection.
    HalfAnswers,
    /// Reads the next message and resets the connection.
    Resets,
}

/// A WebSocket server (tokio-tungstenite's) that answers `<text>` with `answer(<text>)` three
/// times per WebSocket, then does `then`.
async fn serve_websockets(answer: fn(&str) -> String, then: Then) -> Server {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(conn).await else {
                    return;
                };
                for _ in 0..3 {
                    let Some(Ok(Message::Text(text))) = socket.next().await else {
                        return;
                    };
                    let answer = Message::text(answer(text.as_str()));
                    if socket.send(answer).await.is_err() {
                        return;
                    }
                }
                match then {
                    Then::GoesAway => {
                        let away = CloseFrame {
                            code: CloseCode::Away,
                            reason: "upgrading".into(),
                        };
                        let _ = socket.close(Some(away)).await;
                        // Until the client's answer to the close, or its end.
                        while let Some(Ok(_)) = socket.next().await {}
                    }
                    Then::HalfAnswers => {
                        let _ = socket.next().await;
                        let conn = socket.get_mut();
                        // A text frame of 16 bytes, 2 of them sent.
                        let _ = conn.write_all(&[0x81, 16, b'h', b'e']).await;
                        let _ = conn.shutdown().await;
                    }
                    Then::Resets => {
                        let _ = socket.next().await;
                        let _ = socket.get_ref().set_zero_linger();
                    }
                }
            });
        }
    });
    Server { addr, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_closed_with_going_away_between_messages_is_a_reconnect() {
    let server = serve_websockets(|text| format!("{text} 99"), Then::GoesAway).await;
    let report = load(Client::WebSocket, server.addr).await;
    assert_eq!(report.failures(), 0, "{report}");
    assert!(report.succeeded() >= 3, "{report}");
    assert!(report.reconnects() > 0, "{report}");
    assert_eq!(report.pids(), &BTreeSet::from([99]));
    assert_eq!(report.timings().len() as u64, report.succeeded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_dropped_in_the_middle_of_an_answer_is_a_failure() {
    for (then, failure) in [
        (Then::HalfAnswers, Failure::Torn),
        (Then::Resets, Failure::Reset),
    ] {
        let server = serve_websockets(|text| format!("{text} 99"), then).await;
        let report = load(Client::WebSocket, server.addr).await;
        assert!(report.failures_of(failure) > 0, "{then:?}: {report}");
        assert_eq!(
            report.failures(),
            report.failures_of(failure),
            "{then:?}: {report}"
        );
        assert!(report.succeeded() >= 3, "{then:?}: {report}");
        assert_eq!(report.reconnects(), 0, "{then:?}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_answer_that_is_not_the_message_and_a_pid_is_torn() {
    let server = serve_websockets(|text| format!("{text}!"), Then::GoesAway).await;
    let report = load(Client::WebSocket, server.addr).await;
    assert!(report.failures_of(Failure::Torn) > 0, "{report}");
    assert_eq!(report.failures(), report.failures_of(Failure::Torn));
    assert_eq!(report.succeeded(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_answered_with_another_status_is_status() {
    // An HTTP server, not a WebSocket one: the handshake fails with its status.
    let server =
        serve("HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").await;
    let report = load(Client::WebSocket, server.addr).await;
    assert!(report.failures_of(Failure::Status) > 0, "{report}");
    assert_eq!(report.failures(), report.failures_of(Failure::Status));
}
