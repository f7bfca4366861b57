//! A tiny hand-written AMQP 0-9-1 client over a plain `TcpStream`, independent of
//! lapin and amqprs, for handshake inspection and malformed-input tests.

use super::{TestBroker, TIMEOUT};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

/// A field-table value, as decoded from the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    ShortStr(String),
    LongStr(Vec<u8>),
    Array(Vec<Value>),
    Timestamp(u64),
    Table(Table),
    Bytes(Vec<u8>),
    Void,
}

pub type Table = BTreeMap<String, Value>;

impl Value {
    pub fn as_str(&self) -> Option<String> {
        match self {
            Value::LongStr(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::ShortStr(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method {
        channel: u16,
        class: u16,
        method: u16,
        args: Vec<u8>,
    },
    Header {
        channel: u16,
        class: u16,
        body_size: u64,
        props: Vec<u8>,
    },
    Body {
        channel: u16,
        data: Vec<u8>,
    },
    Heartbeat {
        channel: u16,
    },
    Other {
        kind: u8,
        channel: u16,
        payload: Vec<u8>,
    },
}

impl Frame {
    pub fn is_method(&self, class: u16, method: u16) -> bool {
        matches!(self, Frame::Method { class: c, method: m, .. } if *c == class && *m == method)
    }
}

/// Builds method arguments and other payloads.
#[derive(Default, Clone)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new() -> Self {
        Enc(Vec::new())
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn short_str(mut self, s: &str) -> Self {
        assert!(s.len() < 256);
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn long_str(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    /// An empty field table.
    pub fn empty_table(self) -> Self {
        self.u32(0)
    }
    /// A field table.
    pub fn table(mut self, t: &Table) -> Self {
        let mut body = Enc::new();
        for (k, v) in t {
            body = body.short_str(k).value(v);
        }
        self.0
            .extend_from_slice(&(body.0.len() as u32).to_be_bytes());
        self.0.extend_from_slice(&body.0);
        self
    }
    /// A tagged field value.
    pub fn value(self, v: &Value) -> Self {
        match v {
            Value::Bool(b) => self.u8(b't').u8(*b as u8),
            Value::I8(x) => self.u8(b'b').u8(*x as u8),
            Value::U8(x) => self.u8(b'B').u8(*x),
            Value::I16(x) => self.u8(b's').u16(*x as u16),
            Value::U16(x) => self.u8(b'u').u16(*x),
            Value::I32(x) => self.u8(b'I').u32(*x as u32),
            Value::U32(x) => self.u8(b'i').u32(*x),
            Value::I64(x) => self.u8(b'l').u64(*x as u64),
            Value::F32(x) => self.u8(b'f').u32(x.to_bits()),
            Value::F64(x) => self.u8(b'd').u64(x.to_bits()),
            Value::Decimal(s, x) => self.u8(b'D').u8(*s).u32(*x),
            Value::ShortStr(x) => self.u8(b's').short_str(x),
            Value::LongStr(x) => self.u8(b'S').long_str(x),
            Value::Array(items) => {
                let mut body = Enc::new();
                for i in items {
                    body = body.value(i);
                }
                self.u8(b'A').long_str(&body.0)
            }
            Value::Timestamp(x) => self.u8(b'T').u64(*x),
            Value::Table(t) => self.u8(b'F').table(t),
            Value::Bytes(x) => self.u8(b'x').long_str(x),
            Value::Void => self.u8(b'V'),
        }
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

/// A complete frame: type, channel, size, payload, frame-end.
pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

/// A method frame.
pub fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(args.len() + 4);
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    frame(FRAME_METHOD, channel, &payload)
}

/// A basic content header frame with no properties.
pub fn header_frame(channel: u16, body_size: u64) -> Vec<u8> {
    let payload = Enc::new().u16(60).u16(0).u64(body_size).u16(0).build();
    frame(FRAME_HEADER, channel, &payload)
}

/// Reads wire values out of a byte slice.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    pub fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    pub fn short_str(&mut self) -> String {
        let n = self.u8() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    pub fn long_str(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        self.take(n).to_vec()
    }
    pub fn table(&mut self) -> Table {
        let n = self.u32() as usize;
        let end = self.pos + n;
        let mut t = Table::new();
        while self.pos < end {
            let k = self.short_str();
            let v = self.value();
            t.insert(k, v);
        }
        t
    }
    pub fn value(&mut self) -> Value {
        match self.u8() {
            b't' => Value::Bool(self.u8() != 0),
            b'b' => Value::I8(self.u8() as i8),
            b'B' => Value::U8(self.u8()),
            b's' => Value::I16(self.u16() as i16),
            b'u' => Value::U16(self.u16()),
            b'I' => Value::I32(self.u32() as i32),
            b'i' => Value::U32(self.u32()),
            b'l' => Value::I64(self.u64() as i64),
            b'f' => Value::F32(f32::from_bits(self.u32())),
            b'd' => Value::F64(f64::from_bits(self.u64())),
            b'D' => {
                let scale = self.u8();
                Value::Decimal(scale, self.u32())
            }
            b'S' => Value::LongStr(self.long_str()),
            b'A' => {
                let n = self.u32() as usize;
                let end = self.pos + n;
                let mut items = Vec::new();
                while self.pos < end {
                    items.push(self.value());
                }
                Value::Array(items)
            }
            b'T' => Value::Timestamp(self.u64()),
            b'F' => Value::Table(self.table()),
            b'x' => Value::Bytes(self.long_str()),
            b'V' => Value::Void,
            other => panic!("unknown field type {:?}", other as char),
        }
    }
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.buf.len() - self.pos)
    }
}

/// The decoded `connection.start`.
#[derive(Debug, Clone)]
pub struct Start {
    pub version_major: u8,
    pub version_minor: u8,
    pub server_properties: Table,
    pub mechanisms: String,
    pub locales: String,
}

/// The decoded `connection.tune`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tune {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// A decoded `connection.close` or `channel.close`.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseReason {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

pub fn decode_close(args: &[u8]) -> CloseReason {
    let mut d = Dec::new(args);
    CloseReason {
        code: d.u16(),
        text: d.short_str(),
        class_id: d.u16(),
        method_id: d.u16(),
    }
}

/// What the server did after a malformed input.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// connection.close with this reason (close-ok was sent back).
    ConnectionClose(CloseReason),
    /// channel.close with this reason on this channel (close-ok was sent back).
    ChannelClose(u16, CloseReason),
    /// The socket was closed without a close method.
    Eof,
}

/// A raw AMQP connection.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Opens a TCP connection and sends nothing.
    pub async fn connect(broker: &TestBroker) -> RawConn {
        let stream = TcpStream::connect(broker.addr).await.expect("tcp connect");
        stream.set_nodelay(true).ok();
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("socket write");
    }

    /// Like `send`, but tolerates the server having already closed the socket.
    pub async fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn send_method(&mut self, channel: u16, class: u16, method: u16, args: &[u8]) {
        self.send(&method_frame(channel, class, method, args)).await;
    }

    /// Reads exactly `n` bytes; None on EOF (or reset) before that.
    async fn fill(&mut self, n: usize) -> Option<()> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("timed out after {TIMEOUT:?} reading from the broker"),
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(k)) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        Some(())
    }

    /// Reads raw bytes (up to `n`) for protocol-header replies; returns what was
    /// read before EOF.
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        let _ = self.fill(n).await;
        let k = n.min(self.buf.len());
        self.buf.drain(..k).collect()
    }

    /// True once the server has closed the socket (reads until EOF, ignoring data).
    pub async fn wait_eof(&mut self) -> bool {
        loop {
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Reads one frame; None on EOF.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        self.fill(7).await?;
        let kind = self.buf[0];
        let channel = u16::from_be_bytes([self.buf[1], self.buf[2]]);
        let size =
            u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize;
        self.fill(7 + size + 1).await?;
        let payload: Vec<u8> = self.buf[7..7 + size].to_vec();
        assert_eq!(self.buf[7 + size], FRAME_END, "server frame-end octet");
        self.buf.drain(..7 + size + 1);
        let mut d = Dec::new(&payload);
        Some(match kind {
            FRAME_METHOD => {
                let class = d.u16();
                let method = d.u16();
                Frame::Method {
                    channel,
                    class,
                    method,
                    args: d.rest().to_vec(),
                }
            }
            FRAME_HEADER => {
                let class = d.u16();
                let _weight = d.u16();
                let body_size = d.u64();
                Frame::Header {
                    channel,
                    class,
                    body_size,
                    props: d.rest().to_vec(),
                }
            }
            FRAME_BODY => Frame::Body {
                channel,
                data: payload,
            },
            FRAME_HEARTBEAT => Frame::Heartbeat { channel },
            _ => Frame::Other {
                kind,
                channel,
                payload,
            },
        })
    }

    /// Reads frames, skipping heartbeats, until a method frame; None on EOF.
    pub async fn read_method(&mut self) -> Option<(u16, u16, u16, Vec<u8>)> {
        loop {
            match self.read_frame().await? {
                Frame::Method {
                    channel,
                    class,
                    method,
                    args,
                } => return Some((channel, class, method, args)),
                Frame::Heartbeat { .. } => continue,
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Reads a method frame and checks it is `class.method` on `channel`.
    pub async fn expect_method(&mut self, channel: u16, class: u16, method: u16) -> Vec<u8> {
        let (ch, c, m, args) = self
            .read_method()
            .await
            .expect("connection closed by the server");
        assert_eq!(
            (ch, c, m),
            (channel, class, method),
            "unexpected method frame"
        );
        args
    }

    /// Sends the protocol header and reads connection.start.
    pub async fn start(&mut self) -> Start {
        self.send(PROTOCOL_HEADER).await;
        let args = self.expect_method(0, 10, 10).await;
        let mut d = Dec::new(&args);
        Start {
            version_major: d.u8(),
            version_minor: d.u8(),
            server_properties: d.table(),
            mechanisms: String::from_utf8_lossy(&d.long_str()).into_owned(),
            locales: String::from_utf8_lossy(&d.long_str()).into_owned(),
        }
    }

    /// Sends connection.start-ok with PLAIN credentials, announcing the
    /// `authentication_failure_close` client capability.
    pub async fn start_ok(&mut self, user: &str, password: &str) {
        self.start_ok_with(user, password, true).await
    }

    /// Sends connection.start-ok with PLAIN credentials; `auth_failure_close`
    /// sets the client capability of that name.
    pub async fn start_ok_with(&mut self, user: &str, password: &str, auth_failure_close: bool) {
        let mut caps = Table::new();
        caps.insert(
            "authentication_failure_close".into(),
            Value::Bool(auth_failure_close),
        );
        let mut client_props = Table::new();
        client_props.insert("capabilities".into(), Value::Table(caps));
        client_props.insert(
            "product".into(),
            Value::LongStr(b"warrenmq-raw-test".to_vec()),
        );
        let mut response = vec![0u8];
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.extend_from_slice(password.as_bytes());
        let args = Enc::new()
            .table(&client_props)
            .short_str("PLAIN")
            .long_str(&response)
            .short_str("en_US")
            .build();
        self.send_method(0, 10, 11, &args).await;
    }

    pub async fn read_tune(&mut self) -> Tune {
        let args = self.expect_method(0, 10, 30).await;
        let mut d = Dec::new(&args);
        Tune {
            channel_max: d.u16(),
            frame_max: d.u32(),
            heartbeat: d.u16(),
        }
    }

    pub async fn tune_ok(&mut self, tune: Tune) {
        let args = Enc::new()
            .u16(tune.channel_max)
            .u32(tune.frame_max)
            .u16(tune.heartbeat)
            .build();
        self.send_method(0, 10, 31, &args).await;
    }

    pub async fn open(&mut self, vhost: &str) {
        let args = Enc::new().short_str(vhost).short_str("").u8(0).build();
        self.send_method(0, 10, 40, &args).await;
    }

    /// A connection that completed the handshake (heartbeats disabled, the
    /// server's channel_max and frame_max accepted). Returns the server's tune.
    pub async fn open_connection(broker: &TestBroker) -> (RawConn, Tune) {
        let mut c = RawConn::connect(broker).await;
        c.start().await;
        c.start_ok(&broker.target.user, &broker.target.password)
            .await;
        let tune = c.read_tune().await;
        c.tune_ok(Tune {
            heartbeat: 0,
            ..tune
        })
        .await;
        c.open(&broker.target.vhost).await;
        c.expect_method(0, 10, 41).await;
        (c, tune)
    }

    pub async fn open_channel(&mut self, channel: u16) {
        self.send_method(channel, 20, 10, &Enc::new().short_str("").build())
            .await;
        self.expect_method(channel, 20, 11).await;
    }

    /// Reads until the server closes the connection or a channel, answering the
    /// close with close-ok, and reports what happened. Other frames are skipped.
    pub async fn read_outcome(&mut self) -> Outcome {
        loop {
            match self.read_frame().await {
                None => return Outcome::Eof,
                Some(Frame::Method {
                    channel: 0,
                    class: 10,
                    method: 50,
                    args,
                }) => {
                    self.send_lenient(&method_frame(0, 10, 51, &[])).await;
                    return Outcome::ConnectionClose(decode_close(&args));
                }
                Some(Frame::Method {
                    channel,
                    class: 20,
                    method: 40,
                    args,
                }) => {
                    self.send_lenient(&method_frame(channel, 20, 41, &[])).await;
                    return Outcome::ChannelClose(channel, decode_close(&args));
                }
                Some(_) => continue,
            }
        }
    }

    /// Expects a connection.close; answers it and returns the reason.
    pub async fn expect_connection_close(&mut self) -> CloseReason {
        match self.read_outcome().await {
            Outcome::ConnectionClose(r) => r,
            other => panic!("expected connection.close, got {other:?}"),
        }
    }
}

/// Proves the broker still serves new clients: a full raw handshake, a channel,
/// and a queue.declare round trip.
pub async fn assert_broker_still_serves(broker: &TestBroker) {
    let (mut c, _) = RawConn::open_connection(broker).await;
    c.open_channel(1).await;
    // queue.declare: reserved-1, queue "", bits (exclusive|auto-delete), no args
    let args = Enc::new()
        .u16(0)
        .short_str("")
        .u8(0b0000_1100)
        .empty_table()
        .build();
    c.send_method(1, 50, 10, &args).await;
    let ok = c.expect_method(1, 50, 11).await;
    let name = Dec::new(&ok).short_str();
    assert!(name.starts_with("amq.gen-"), "server-named queue: {name}");
    c.send_method(
        0,
        10,
        50,
        &Enc::new().u16(200).short_str("bye").u16(0).u16(0).build(),
    )
    .await;
    c.expect_method(0, 10, 51).await;
}
