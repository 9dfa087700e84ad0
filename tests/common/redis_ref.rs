//! RESP test helpers: a RESP server in front of a mesh, raw clients (exact
//! request and reply bytes), and a reference redis-server to compare a
//! peer's replies with Redis's byte for byte (tests/redis_parity.rs).

use std::path::Path;
use std::process::Stdio;

use bytes::BytesMut;
use meshcache::resp::{serve, RespConfig};
use meshcache::transport::faults::Faults;
use meshcache::Mesh;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::wait::DEADLINE;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client sending multibulk commands and reading whole reply frames.
pub struct Conn {
    sock: Box<dyn Io>,
    buf: BytesMut,
    /// Decode replies as RESP3 (set before sending `HELLO 3`).
    pub resp3: bool,
}

impl Conn {
    pub fn new(sock: impl Io + 'static) -> Conn {
        Conn { sock: Box::new(sock), buf: BytesMut::new(), resp3: false }
    }

    pub async fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let mut req = Vec::new();
        encode(&mut req, args);
        self.sock.write_all(&req).await.unwrap();
        self.next().await
    }

    /// Sends every command in one write, then reads one frame each: a
    /// pipeline, for commands that answer with one frame.
    pub async fn pipeline(&mut self, cmds: &[Vec<&[u8]>]) -> Vec<Vec<u8>> {
        let mut req = Vec::new();
        for args in cmds {
            encode(&mut req, args);
        }
        self.sock.write_all(&req).await.unwrap();
        let mut replies = Vec::with_capacity(cmds.len());
        for _ in cmds {
            replies.push(self.next().await);
        }
        replies
    }

    /// The next frame the server sends (a reply, or a pub/sub message).
    pub async fn next(&mut self) -> Vec<u8> {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let len = frame_len(&self.buf, self.resp3);
            if let Some(n) = len {
                return self.buf.split_to(n).to_vec();
            }
            let read = tokio::time::timeout_at(end, self.sock.read_buf(&mut self.buf)).await;
            let n = read.expect("a frame within the deadline").unwrap();
            assert!(n > 0, "connection closed before the next frame");
        }
    }
}

/// Appends `args` to `req` as a multibulk command.
fn encode(req: &mut Vec<u8>, args: &[&[u8]]) {
    req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
}

pub fn show(args: &[&[u8]]) -> String {
    args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>().join(" ")
}

/// A redis-server of its own, killed when dropped.
pub struct RedisServer {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    pub socket: std::path::PathBuf,
}

impl RedisServer {
    /// `None` when redis-server is not installed (and not under CI).
    pub async fn start() -> Option<RedisServer> {
        if !super::process::tool("redis-server", "redis-server") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        super::wait::eventually_async("redis-server's socket", || ready(&socket)).await;
        Some(RedisServer { _child: child, _dir: dir, socket })
    }
}

async fn ready(socket: &Path) -> bool {
    let Ok(s) = UnixStream::connect(socket).await else { return false };
    let mut c = Conn::new(s);
    c.cmd(&[b"PING"]).await == b"+PONG\r\n"
}

/// One step of a script: a command, and what is checked of its reply.
pub struct Step(pub &'static [&'static str], pub Check);

#[derive(Clone, Copy, PartialEq)]
pub enum Check {
    /// The same bytes from both.
    Same,
    /// Nothing: the reply depends on the moment or the server.
    Nothing,
    /// meshcache's reply is these bytes, which redis-server 7.0 (Debian's)
    /// does not give because Redis 7.2, whose behaviour meshcache follows,
    /// changed it.
    Redis72(&'static str),
}

pub fn same(args: &'static [&'static str]) -> Step {
    Step(args, Check::Same)
}

pub fn run_only(args: &'static [&'static str]) -> Step {
    Step(args, Check::Nothing)
}

pub fn redis72(args: &'static [&'static str], reply: &'static str) -> Step {
    Step(args, Check::Redis72(reply))
}

/// A connection to the peer on `mesh_port` and one to `redis`, to send
/// both the same commands.
pub async fn pair(mesh_port: u16, redis: &RedisServer) -> (Conn, Conn) {
    let ours = Conn::new(TcpStream::connect(("127.0.0.1", mesh_port)).await.unwrap());
    let theirs = Conn::new(UnixStream::connect(&redis.socket).await.unwrap());
    (ours, theirs)
}

/// Runs `script` against both servers from an empty keyspace, comparing
/// the replies; returns how many were compared.
pub async fn compare(mesh_port: u16, redis: &RedisServer, script: &[Step]) -> usize {
    let (mut ours, mut theirs) = pair(mesh_port, redis).await;
    for c in [&mut ours, &mut theirs] {
        assert_eq!(c.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
    }
    let mut compared = 0;
    for Step(args, check) in script {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        if args[0].eq_ignore_ascii_case(b"hello") && args.get(1) == Some(&&b"3"[..]) {
            ours.resp3 = true;
            theirs.resp3 = true;
        }
        let a = ours.cmd(&args).await;
        let b = theirs.cmd(&args).await;
        // RESET goes back to RESP2.
        if args[0].eq_ignore_ascii_case(b"reset") {
            ours.resp3 = false;
            theirs.resp3 = false;
        }
        match check {
            Check::Same => {
                assert_eq!(
                    String::from_utf8_lossy(&a),
                    String::from_utf8_lossy(&b),
                    "meshcache (left) and redis-server (right) differ on `{}`",
                    show(&args)
                );
                compared += 1;
            }
            Check::Redis72(want) => assert_eq!(String::from_utf8_lossy(&a), *want, "on `{}`", show(&args)),
            Check::Nothing => {}
        }
    }
    compared
}

/// A lone peer with a RESP server on a port the OS chose.
pub struct RespPeer {
    pub mesh: meshcache::Mesh,
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RespPeer {
    pub async fn start(name: &str) -> RespPeer {
        let ca = meshcache::transport::certs::EphemeralCa::new().unwrap();
        Self::serve(super::mesh::start(&ca, name, &[]).await).await
    }

    /// As [`RespPeer::start`], with `config` (named as the peer is).
    pub async fn start_with(config: meshcache::MeshConfig) -> RespPeer {
        let ca = meshcache::transport::certs::EphemeralCa::new().unwrap();
        let id = ca.issue(&config.name).unwrap();
        Self::serve(meshcache::Mesh::builder().config(config).tls(id).start().await.unwrap()).await
    }

    async fn serve(mesh: meshcache::Mesh) -> RespPeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = meshcache::resp::RespConfig::default();
        let task = tokio::spawn(meshcache::resp::serve(mesh.clone(), listener, config, async move {
            let _ = stopped.await;
        }));
        RespPeer { mesh, port, stop: Some(stop), task }
    }

    /// `n` peers, the first alone and the others seeded with it, all booted
    /// and connected to each other, each with a RESP server.
    pub async fn cluster(n: usize) -> Vec<RespPeer> {
        Self::cluster_on(n, None).await
    }

    /// As [`RespPeer::cluster`], each peer over a fault-injecting socket of
    /// `faults`, with the configuration `config` makes of its name.
    pub async fn faulty_cluster(
        n: usize,
        faults: &Faults,
        config: impl Fn(&str) -> meshcache::MeshConfig,
    ) -> Vec<RespPeer> {
        Self::cluster_on(n, Some((faults, &config))).await
    }

    async fn cluster_on(n: usize, faults: Option<(&Faults, &MakeConfig<'_>)>) -> Vec<RespPeer> {
        let ca = meshcache::transport::certs::EphemeralCa::new().unwrap();
        let mut peers: Vec<RespPeer> = Vec::new();
        for i in 0..n {
            let seeds: Vec<_> = peers.first().map(|p| p.mesh.local_addr()).into_iter().collect();
            let name = format!("p{i}");
            let mesh = match faults {
                Some((f, config)) => super::mesh::start_faulty_with(config(&name), &ca, f, &seeds).await,
                None => super::mesh::start(&ca, &name, &seeds).await,
            };
            peers.push(Self::serve(mesh).await);
        }
        for p in &peers {
            assert!(p.mesh.wait_ready(DEADLINE).await, "{} never finished bootstrap", p.mesh.id());
        }
        super::wait::eventually("full mesh", || peers.iter().all(|p| p.mesh.stats().connected == n - 1)).await;
        peers
    }

    pub async fn stop(mut self) {
        drop(self.stop.take());
        tokio::time::timeout(DEADLINE, self.task).await.expect("the server stops").unwrap().unwrap();
        self.mesh.shutdown().await;
    }
}

/// A peer's configuration, made from its name.
type MakeConfig<'a> = dyn Fn(&str) -> meshcache::MeshConfig + 'a;

/// A RESP server running in front of a mesh.
pub struct Server {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(mesh: &Mesh, config: RespConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(mesh.clone(), listener, config, async move {
            let _ = rx.await;
        }));
        Server { port, stop: Some(tx), task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&super::patient())
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        drop(self.stop.take());
        tokio::time::timeout(DEADLINE, self.task).await.expect("server stops").unwrap().unwrap();
    }
}

/// A raw client: exact request bytes, exact reply bytes.
pub struct Raw {
    pub sock: TcpStream,
    pub buf: BytesMut,
    /// Decode replies as RESP3 (set before sending `HELLO 3`).
    pub resp3: bool,
}

impl Raw {
    /// The address the server sees this client at.
    pub fn addr(&self) -> String {
        self.sock.local_addr().unwrap().to_string()
    }

    pub async fn connect(port: u16) -> Raw {
        Raw { sock: TcpStream::connect(("127.0.0.1", port)).await.unwrap(), buf: BytesMut::new(), resp3: false }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// Sends one command as a multibulk and returns the bytes of its reply.
    pub async fn cmd(&mut self, args: &[&str]) -> String {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        self.send(req.as_bytes()).await;
        self.reply().await.unwrap_or_else(|| panic!("no reply to {args:?}"))
    }

    /// The next complete reply frame, found with `redis_protocol`'s decoders
    /// (so that every reply checked is also well-formed RESP); `None` once
    /// the server closed the connection.
    pub async fn reply(&mut self) -> Option<String> {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let len = frame_len(&self.buf, self.resp3);
            if let Some(n) = len {
                let frame = self.buf.split_to(n);
                return Some(String::from_utf8_lossy(&frame).into_owned());
            }
            let read = tokio::time::timeout_at(end, self.sock.read_buf(&mut self.buf)).await;
            match read.expect("a reply within the deadline") {
                Ok(0) | Err(_) => {
                    assert!(self.buf.is_empty(), "partial frame before close: {:?}", self.buf);
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    /// Reads until the server closes the connection; returns what came.
    pub async fn read_to_close(&mut self) -> String {
        let mut all = std::mem::take(&mut self.buf).to_vec();
        let r = tokio::time::timeout(DEADLINE, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        r.expect("the server closes the connection");
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// The length of the first complete reply frame in `buf`, found with
/// `redis_protocol`'s decoders (so that every reply checked is also
/// well-formed RESP); `None` while it is incomplete.
fn frame_len(buf: &[u8], resp3: bool) -> Option<usize> {
    if resp3 {
        redis_protocol::resp3::decode::complete::decode(buf).expect("valid RESP3").map(|(_, n)| n)
    } else {
        redis_protocol::resp2::decode::decode(buf).expect("valid RESP2").map(|(_, n)| n)
    }
}

/// Two peers, `a` and `b` (seeded with `a`), booted and connected, each
/// with a RESP server.
pub async fn resp_pair() -> (Vec<Mesh>, Vec<Server>) {
    let ca = meshcache::transport::certs::EphemeralCa::new().unwrap();
    let a = super::mesh::start(&ca, "a", &[]).await;
    let b = super::mesh::start(&ca, "b", &[a.local_addr()]).await;
    for m in [&a, &b] {
        assert!(m.wait_ready(DEADLINE).await, "{} never finished bootstrap", m.id());
    }
    super::wait::eventually("a and b connected", || a.stats().connected == 1 && b.stats().connected == 1).await;
    let servers = vec![Server::start(&a, RespConfig::default()).await, Server::start(&b, RespConfig::default()).await];
    (vec![a, b], servers)
}

/// Stops the servers, then the peers.
pub async fn stop_all(meshes: Vec<Mesh>, servers: Vec<Server>) {
    for s in servers {
        s.stop().await;
    }
    for m in meshes {
        m.shutdown().await;
    }
}
