//! A TCP proxy in front of a server whose connections a test can reset, as a NAT or a
//! middlebox that forgets a flow would: both ends get a reset, so the server ends the
//! session (which frees its locks) and the client's next read fails.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy listening on a port of its own, forwarding to a server's port.
#[derive(Debug)]
pub struct ResettingProxy {
    port: u16,
    /// Counts the resets; each connection resets when it changes.
    resets: watch::Sender<u64>,
}

impl ResettingProxy {
    /// Starts a proxy to `127.0.0.1:server_port` on the current tokio runtime.
    pub async fn start(server_port: u16) -> ResettingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (resets, _) = watch::channel(0);
        let reset_signal = resets.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                    continue;
                };
                let mut reset = reset_signal.subscribe();
                reset.mark_unchanged();
                tokio::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = reset.changed() => {
                            // A zero linger turns the close into a reset, on both sides.
                            let _ = client.set_zero_linger();
                            let _ = server.set_zero_linger();
                        }
                    }
                });
            }
        });
        ResettingProxy { port, resets }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resets every connection made through the proxy so far: a TCP reset to the client and
    /// to the server. New connections go through as before.
    pub fn reset_all(&self) {
        self.resets.send_modify(|resets| *resets += 1);
    }
}
