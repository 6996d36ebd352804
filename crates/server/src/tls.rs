//! Listeners: plain TCP (loopback unless explicitly allowed) and TLS with rustls,
//! optionally asking for client certificates. Both hand axum a [`ConnInfo`] per connection,
//! so handlers see the peer address and whether it proved a client certificate.
//!
//! The TLS handshakes run in their own tasks, at most [`HANDSHAKES_INFLIGHT_MAX`] at once
//! and each within [`HANDSHAKE_TIMEOUT_SECS`], so a slow or silent client never holds up
//! the accept loop.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// TLS handshakes in progress at once; further connections wait to be accepted.
pub const HANDSHAKES_INFLIGHT_MAX: usize = 256;
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Handshaken connections waiting for the HTTP server to take them.
const READY_QUEUE_MAX: usize = 64;

/// What the server knows of a connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The client presented a certificate that chains to the configured client CA.
    pub client_cert: bool,
}

pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (TcpStream, ConnInfo) {
        loop {
            match self.0.accept().await {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    return (
                        s,
                        ConnInfo {
                            peer,
                            client_cert: false,
                        },
                    );
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<ConnInfo> {
        Ok(ConnInfo {
            peer: self.0.local_addr()?,
            client_cert: false,
        })
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> ConnInfo {
        stream.remote_addr().clone()
    }
}

pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, ConnInfo)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, ready) = tokio::sync::mpsc::channel(READY_QUEUE_MAX);
        let permits = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_INFLIGHT_MAX));
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("semaphore open"),
                    _ = tx.closed() => return,
                };
                let (sock, peer) = tokio::select! {
                    a = tcp.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    // The server stopped: drop the listener so the port is free.
                    _ = tx.closed() => return,
                };
                let _ = sock.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let shake = tokio::time::timeout(
                        Duration::from_secs(HANDSHAKE_TIMEOUT_SECS),
                        acceptor.accept(sock),
                    );
                    match shake.await {
                        Ok(Ok(stream)) => {
                            let client_cert = stream.get_ref().1.peer_certificates().is_some();
                            let _ = tx.send((stream, ConnInfo { peer, client_cert })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, ConnInfo) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this receiver is gone; never reached while
            // the server holds it, so wait for the shutdown that drops it.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<ConnInfo> {
        Ok(ConnInfo {
            peer: self.local,
            client_cert: false,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> ConnInfo {
        stream.remote_addr().clone()
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("failed to read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} holds a malformed certificate", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Builds the rustls configuration from PEM files: the server's certificate chain and key,
/// and optionally the CA that client certificates must chain to (they are then asked for,
/// but optional at the handshake; routes that need one say so).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("failed to read a private key from {}", key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).with_context(|| {
                    format!("{} holds an unusable CA certificate", ca.display())
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the TLS certificate does not match its key")?;
    // h2 for OTLP/gRPC (and any HTTP/2 client), HTTP/1.1 for the rest.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
