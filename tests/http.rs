//! The axum example as a real process, upgraded with SIGHUP while real hyper clients use it.
#![cfg(target_os = "linux")]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{SinkExt, StreamExt};
use graceful::DrainOutcome;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{STEP, Server};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SERVER: &str = env!("CARGO_BIN_EXE_http-server");

/// The pid in a `hello from <pid>` or `slow N from <pid>` body.
fn pid_of(body: &str) -> u32 {
    body.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn http1(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A GET on a keep-alive connection: status, whether the server asked to close, body.
async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<(StatusCode, bool, String), String> {
    let request = Request::get(path)
        .header(HOST, "localhost")
        .body(Empty::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let close = response
        .headers()
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, close, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads one HTTP/1.1 response: status line, whether it says `Connection: close`, body.
async fn read_response(reader: &mut (impl AsyncBufRead + Unpin)) -> (String, bool, String) {
    tokio::time::timeout(STEP, async {
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        let mut length = 0;
        let mut close = false;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await.unwrap();
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            close |= header == "connection: close";
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        (status, close, String::from_utf8(body).unwrap())
    })
    .await
    .expect("a response in time")
}

#[tokio::test]
async fn a_slow_request_started_before_the_upgrade_completes_on_the_old_process() {
    let server = Server::start(SERVER, &[]).await;
    // A plain socket, so that the request has certainly been sent before the upgrade starts;
    // a first request makes sure the old process has accepted the connection.
    let (reader, mut conn) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let mut reader = BufReader::new(reader);
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, close, body) = read_response(&mut reader).await;
    assert!(status.starts_with("HTTP/1.1 200") && !close, "{status:?}");
    assert_eq!(pid_of(&body), server.pid());

    conn.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let old = server.upgrade().await;
    let (status, close, body) = read_response(&mut reader).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    assert_eq!(body, format!("slow 1500 from {old}"));
    assert!(
        close,
        "answered after the upgrade, so with Connection: close"
    );
    drop((conn, reader));
    let retired = server.wait_exited(old).await;
    let drain = retired.drain().unwrap();
    assert_eq!((drain.abandoned, drain.outcome), (0, DrainOutcome::Drained));
}

/// Four keep-alive clients send requests back to back, each on its connection until the server
/// answers with `Connection: close`, while the server is upgraded three times. Not one request
/// fails; the clients end up talking to the newest process. Without hand-off, every client
/// is moved by a `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_handoff_keep_alive_clients_sending_back_to_back_see_no_error_across_upgrades() {
    let total = keep_alive_clients_across_upgrades(&["--handoff", "off"]).await;
    assert!(
        total.get("closed by server").copied().unwrap_or(0) >= 4,
        "every client moved at least once: {total:?}"
    );
}

/// The same with hand-off: idle connections move to the new process with their client, busy
/// ones are closed after their response; not one request fails either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_handoff_keep_alive_clients_sending_back_to_back_see_no_error_across_upgrades() {
    keep_alive_clients_across_upgrades(&[]).await;
}

/// Runs the four clients across three upgrades, checks that no request failed, and returns
/// what they saw.
async fn keep_alive_clients_across_upgrades(args: &[&str]) -> BTreeMap<String, u64> {
    let server = Server::start(SERVER, args).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, seen, addr) = (stop.clone(), seen_tx.clone(), server.addr());
            tokio::spawn(async move {
                let mut tally = BTreeMap::<String, u64>::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut sender = match http1(addr).await {
                        Ok(sender) => sender,
                        Err(err) => {
                            *tally.entry(err).or_default() += 1;
                            continue;
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        match get(&mut sender, "/").await {
                            Ok((StatusCode::OK, close, body)) => {
                                *tally.entry("ok".into()).or_default() += 1;
                                let _ = seen.send(pid_of(&body));
                                if close {
                                    *tally.entry("closed by server".into()).or_default() += 1;
                                    break;
                                }
                            }
                            Ok((status, ..)) => {
                                *tally.entry(format!("status {status}")).or_default() += 1;
                            }
                            Err(err) => {
                                *tally.entry(err).or_default() += 1;
                                break;
                            }
                        }
                    }
                }
                tally
            })
        })
        .collect();

    let mut wait_answered_by = async |pid: u32| {
        let answered = tokio::time::timeout(STEP, async {
            while let Some(seen) = seen_rx.recv().await {
                if seen == pid {
                    return;
                }
            }
        });
        answered
            .await
            .unwrap_or_else(|_| panic!("no answer from pid {pid} within {STEP:?}"));
    };
    wait_answered_by(server.pid()).await;
    for _ in 0..3 {
        server.upgrade().await;
        wait_answered_by(server.pid()).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = BTreeMap::<String, u64>::new();
    for client in clients {
        for (outcome, count) in client.await.unwrap() {
            *total.entry(outcome).or_default() += count;
        }
    }
    let failures: u64 = total
        .iter()
        .filter(|(outcome, _)| !matches!(outcome.as_str(), "ok" | "closed by server"))
        .map(|(_, count)| count)
        .sum();
    assert_eq!(failures, 0, "{total:?}");
    total
}

#[tokio::test]
async fn an_http2_client_gets_goaway_and_its_next_connection_reaches_the_new_process() {
    let server = Server::start(SERVER, &[]).await;
    let addr = server.addr();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = || {
        Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let response = sender.send_request(request()).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let old = pid_of(&String::from_utf8_lossy(&body));
    assert_eq!(old, server.pid());

    server.upgrade().await;
    // GOAWAY: the connection ends cleanly, not with a reset.
    let ended = tokio::time::timeout(STEP, connection)
        .await
        .expect("the HTTP/2 connection did not end after the upgrade")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(pid_of(&String::from_utf8_lossy(&body)), server.pid());
}

#[tokio::test]
async fn without_handoff_a_websocket_is_closed_at_a_message_boundary_and_holds_the_old_process() {
    // Without a probation, the drain begins as the WebSocket is told to close, so it is seen
    // open; with one, the drain would begin only once the probation is over.
    let server = Server::start(SERVER, &["--probation", "0s", "--handoff", "off"]).await;
    let url = format!("ws://{}/ws", server.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let old = server.pid();
    socket.send(Message::text("before")).await.unwrap();
    let answer = tokio::time::timeout(STEP, socket.next())
        .await
        .expect("an answer")
        .unwrap()
        .unwrap();
    assert_eq!(answer, Message::text(format!("before {old}")));

    server.upgrade().await;
    // The next frame is the server's close, going away: no message is cut.
    let next = tokio::time::timeout(STEP, socket.next()).await;
    match next.expect("a frame after the upgrade").unwrap().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The old process waited for the WebSocket: it is tracked even though it left hyper.
    drop(socket);
    let retired = server.wait_exited(old).await;
    let drain = retired.drain().unwrap();
    assert_eq!(
        drain.open_at_start, 1,
        "the WebSocket was still open when draining began"
    );
    assert_eq!((drain.abandoned, drain.outcome), (0, DrainOutcome::Drained));

    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    socket.send(Message::text("after")).await.unwrap();
    let answer = tokio::time::timeout(STEP, socket.next())
        .await
        .expect("an answer")
        .unwrap()
        .unwrap();
    assert_eq!(answer, Message::text(format!("after {}", server.pid())));
}

/// A connection opened before the upgrade that sends its first request only once the new
/// process is ready: served (by the old process, which accepted it, or by the new one if it was
/// still queued), never closed unanswered.
#[tokio::test]
async fn a_connection_opened_before_the_upgrade_is_served_its_first_request() {
    let server = Server::start(SERVER, &[]).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    let old = server.upgrade().await;
    // Send only once the old process is winding down, so that its connections have seen the
    // upgrade before their first request arrives.
    server.wait_log("upgraded; winding down").await;
    for conn in &mut conns {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
    }
    for conn in conns {
        let (status, _, body) = read_response(&mut BufReader::new(conn)).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
        // Served by the old process (which then closes) or the new one.
        let pid = pid_of(&body);
        assert!(pid == old || pid == server.pid(), "answered by {pid}");
    }
}

/// Waits until generation `pid` has exited, and checks that it drained and handed `handed_off`
/// connections over.
async fn wait_exited_having_handed_off(server: &Server, pid: u32, handed_off: usize) {
    let retired = server.wait_exited(pid).await;
    let drain = retired.drain().unwrap();
    assert_eq!((drain.abandoned, drain.outcome), (0, DrainOutcome::Drained));
    server
        .wait_log(&format!(
            "exited pid={pid} open_at_start={} abandoned=0 outcome=Drained handed_off={handed_off}",
            drain.open_at_start
        ))
        .await;
}

/// One WebSocket, one TCP connection, three upgrades: a client sends numbered messages back to
/// back the whole time, and every one is answered once, in order, with no close frame; the
/// answers move to each new pid as it takes over, and end with the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_handed_over_across_upgrades_without_a_close_or_a_lost_message() {
    let server = Server::start(SERVER, &["--probation", "0s"]).await;
    let url = format!("ws://{}/ws", server.addr());
    let (socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let local = match socket.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
        _ => unreachable!("ws:// is plain TCP"),
    };
    let (mut sink, stream) = socket.split();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sink.send(Message::text(format!("m{sent}"))).await.unwrap();
                sent += 1;
                // A little room, so that the replies can keep up.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            (sink, sent)
        })
    };
    let mut answers = Answers {
        stream,
        expected: 0,
        pids: Vec::new(),
    };
    answers.until_answered_by(server.pid()).await;
    for _ in 0..3 {
        let old = server.upgrade().await;
        answers.until_answered_by(server.pid()).await;
        wait_exited_having_handed_off(&server, old, 1).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (sink, sent) = sender.await.unwrap();
    // Every message sent is answered, by the newest process.
    while answers.expected < sent {
        answers.until_answered_by(server.pid()).await;
    }
    let mut generations = answers.pids.clone();
    generations.dedup();
    assert_eq!(
        generations,
        server
            .generations()
            .iter()
            .map(|g| g.pid())
            .collect::<Vec<_>>(),
        "the answers moved from each generation to the next, never back"
    );
    // Still the same TCP connection, and still open.
    let socket = sink.reunite(answers.stream).unwrap();
    match socket.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => {
            assert_eq!(tcp.local_addr().unwrap(), local)
        }
        _ => unreachable!(),
    }
}

/// One HTTP/1.1 keep-alive connection, three upgrades: each request after an upgrade is
/// answered on the same connection by the new pid, with no `Connection: close`; a request
/// half sent when the connection is handed over is finished by the new process.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_handed_over_across_upgrades() {
    let server = Server::start(SERVER, &["--probation", "0s"]).await;
    let (reader, mut conn) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let mut reader = BufReader::new(reader);
    for round in 0..3 {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let (status, close, body) = read_response(&mut reader).await;
        assert!(status.starts_with("HTTP/1.1 200") && !close, "{status:?}");
        assert_eq!(pid_of(&body), server.pid(), "round {round}");
        // Half a request: the old process has read it (hyper reads what arrives) and hands it
        // over with the connection.
        conn.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let old = server.upgrade().await;
        wait_exited_having_handed_off(&server, old, 1).await;
        conn.write_all(b"st: localhost\r\n\r\n").await.unwrap();
        let (status, close, body) = read_response(&mut reader).await;
        assert!(status.starts_with("HTTP/1.1 200") && !close, "{status:?}");
        assert_eq!(pid_of(&body), server.pid(), "answered by the new process");
    }
}

/// With `--handoff off`, an idle keep-alive connection is not moved: its next request is
/// answered by the old process with `Connection: close`.
#[tokio::test]
async fn without_handoff_an_idle_keep_alive_connection_is_answered_with_connection_close() {
    let server = Server::start(SERVER, &["--handoff", "off"]).await;
    let (reader, mut conn) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let mut reader = BufReader::new(reader);
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (_, close, body) = read_response(&mut reader).await;
    assert!(!close);
    let old = pid_of(&body);
    server.upgrade().await;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, close, body) = read_response(&mut reader).await;
    assert!(status.starts_with("HTTP/1.1 200") && close, "{status:?}");
    assert_eq!(pid_of(&body), old);
}

type WebSocketReader = futures::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
>;

/// The answers to messages `m0`, `m1`, … read in order.
struct Answers {
    stream: WebSocketReader,
    /// The number of the next message to be answered.
    expected: u64,
    /// The pids that answered, in order, each once in a row.
    pids: Vec<u32>,
}

impl Answers {
    /// Reads answers, checking their order, until one comes from `pid`.
    async fn until_answered_by(&mut self, pid: u32) {
        let read = tokio::time::timeout(STEP, async {
            loop {
                let message = self
                    .stream
                    .next()
                    .await
                    .expect("the WebSocket ended")
                    .expect("a WebSocket error");
                let Message::Text(text) = message else {
                    panic!(
                        "after m{}: expected a text answer, got {message:?}",
                        self.expected
                    );
                };
                let (body, from) = text.as_str().rsplit_once(' ').unwrap();
                assert_eq!(
                    body,
                    format!("m{}", self.expected),
                    "answers in order, none lost or repeated"
                );
                self.expected += 1;
                let from: u32 = from.parse().unwrap();
                if self.pids.last() != Some(&from) {
                    self.pids.push(from);
                }
                if from == pid {
                    return;
                }
            }
        });
        read.await
            .unwrap_or_else(|_| panic!("no answer from pid {pid} within {STEP:?}"));
    }
}

/// A WebSocket client frame: final, text, masked (as clients must).
fn masked_text_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126, "a short frame");
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one short unmasked server frame: its opcode and payload.
async fn read_server_frame(reader: &mut (impl AsyncBufRead + Unpin)) -> (u8, String) {
    tokio::time::timeout(STEP, async {
        let mut head = [0u8; 2];
        reader.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = usize::from(head[1] & 0x7f);
        assert!(len < 126, "a short frame");
        let mut payload = vec![0; len];
        reader.read_exact(&mut payload).await.unwrap();
        (head[0] & 0x0f, String::from_utf8(payload).unwrap())
    })
    .await
    .expect("a frame in time")
}

/// A WebSocket on a plain socket, so that the test can send half a frame: the half that the
/// old process has read when it hands the WebSocket over travels in the record, and the new
/// process answers the whole message, once.
#[tokio::test]
async fn a_message_half_received_when_the_websocket_is_handed_over_is_answered_by_the_new_process()
{
    let server = Server::start(SERVER, &["--probation", "0s"]).await;
    let (reader, mut conn) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let mut reader = BufReader::new(reader);
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, accept) = tokio::time::timeout(STEP, async {
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        let mut accept = String::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await.unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("sec-websocket-accept") {
                    accept = value.trim().to_owned();
                }
            }
        }
        (status, accept)
    })
    .await
    .expect("the handshake's answer in time");
    assert!(status.starts_with("HTTP/1.1 101"), "{status:?}");
    // RFC 6455's own example key and answer.
    assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    for round in 0..3 {
        let before = format!("before {round}");
        conn.write_all(&masked_text_frame(&before)).await.unwrap();
        let answer = read_server_frame(&mut reader).await;
        assert_eq!(answer, (1, format!("{before} {}", server.pid())));

        let after = format!("after {round}");
        let frame = masked_text_frame(&after);
        let (first, rest) = frame.split_at(frame.len() / 2);
        conn.write_all(first).await.unwrap();
        let old = server.upgrade().await;
        wait_exited_having_handed_off(&server, old, 1).await;
        conn.write_all(rest).await.unwrap();
        let answer = read_server_frame(&mut reader).await;
        assert_eq!(
            answer,
            (1, format!("{after} {}", server.pid())),
            "no close, the whole message"
        );
    }
}

/// A new process that takes nothing over (an older build, or one run with `--handoff off`):
/// the old process keeps its connections and winds them down as without hand-off. The idle
/// keep-alive connection's next request is answered by the old process with
/// `Connection: close`, and the WebSocket gets its 1001 close at the message boundary.
#[tokio::test]
async fn when_the_new_process_takes_nothing_over_connections_wind_down_as_without_handoff() {
    let bin = tempfile::tempdir().unwrap();
    let path = bin.path().join("http-server");
    std::fs::copy(SERVER, &path).unwrap();
    let server = Server::start(path.to_str().unwrap(), &["--probation", "0s"]).await;
    let old = server.pid();
    let (reader, mut conn) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let mut reader = BufReader::new(reader);
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (_, close, body) = read_response(&mut reader).await;
    assert!(!close);
    assert_eq!(pid_of(&body), old);
    let url = format!("ws://{}/ws", server.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    socket.send(Message::text("before")).await.unwrap();
    let answer = tokio::time::timeout(STEP, socket.next())
        .await
        .expect("an answer");
    assert_eq!(
        answer.unwrap().unwrap(),
        Message::text(format!("before {old}"))
    );

    // The deploy: the binary at the same path is now one that takes nothing over.
    let wrapper = bin.path().join("wrapper");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {SERVER} \"$@\" --handoff off\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&wrapper, &path).unwrap();
    assert_eq!(server.upgrade().await, old);

    // Within the idle grace (1 s) of the upgrade.
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, close, body) = read_response(&mut reader).await;
    assert!(status.starts_with("HTTP/1.1 200") && close, "{status:?}");
    assert_eq!(
        pid_of(&body),
        old,
        "answered by the old process, which kept it"
    );
    let next = tokio::time::timeout(STEP, socket.next()).await;
    match next.expect("a frame after the upgrade").unwrap().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    drop((socket, conn, reader));
    wait_exited_having_handed_off(&server, old, 0).await;
}
