//! What the tests that run a real `minimq-server` process share: a free port, and the
//! process itself, killed with SIGKILL when dropped (a failed assertion must not leave it
//! running: it holds the test's stderr open, so the test run would never end).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An address on loopback nothing listens on now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `minimq-server` process (see the module docs).
pub struct Server(Child);

impl Server {
    /// SIGKILL, then reap the process so its port and files are released.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `minimq-server` on `addr` over `dir`, with `extra` flags, and waits until it
/// accepts connections.
pub fn spawn_server(addr: SocketAddr, dir: &Path, extra: &[&str]) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_minimq-server"))
        .args([
            "--listen",
            &addr.to_string(),
            "--http",
            "off",
            "--log",
            "warn",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start minimq-server");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "minimq-server did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}
