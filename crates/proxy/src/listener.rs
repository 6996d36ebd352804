//! The proxy's listener: plain TCP or TLS (the server's listeners and TLS configuration),
//! with every connection wrapped so a handler can reset it. A reset sets `SO_LINGER` to
//! zero and fails the connection's next read or write, so the kernel answers with a TCP
//! RST instead of an orderly close: what a client sees when a box in the path gives up.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use steadfast_server::tls::{self, ConnInfo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Edge;

/// A connection as handlers see it.
#[derive(Clone, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub reset: Arc<AtomicBool>,
}

impl Conn {
    /// The connection is reset instead of answered.
    pub fn reset(&self) {
        self.reset.store(true, Ordering::Release);
    }
}

/// The socket under a stream.
pub trait Socket {
    fn socket_fd(&self) -> RawFd;
}

impl Socket for TcpStream {
    fn socket_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn socket_fd(&self) -> RawFd {
        self.get_ref().0.as_raw_fd()
    }
}

pub struct ResetIo<S> {
    inner: S,
    reset: Arc<AtomicBool>,
    lingered: bool,
}

impl<S: Socket> ResetIo<S> {
    fn check(&mut self) -> io::Result<()> {
        if !self.reset.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.lingered {
            self.lingered = true;
            // SAFETY: the descriptor belongs to `inner`, which is alive for this borrow.
            let fd = unsafe { BorrowedFd::borrow_raw(self.inner.socket_fd()) };
            let _ = socket2::SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "reset by a drill",
        ))
    }
}

impl<S: AsyncRead + Socket + Unpin> AsyncRead for ResetIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Socket + Unpin> AsyncWrite for ResetIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub struct ResetListener<L>(L);

impl<L> Listener for ResetListener<L>
where
    L: Listener<Addr = ConnInfo>,
    L::Io: Socket,
{
    type Io = ResetIo<L::Io>;
    type Addr = Conn;

    async fn accept(&mut self) -> (Self::Io, Conn) {
        let (io, info) = self.0.accept().await;
        let reset = Arc::new(AtomicBool::new(false));
        (
            ResetIo {
                inner: io,
                reset: reset.clone(),
                lingered: false,
            },
            Conn {
                peer: info.peer,
                reset,
            },
        )
    }

    fn local_addr(&self) -> io::Result<Conn> {
        Ok(Conn {
            peer: self.0.local_addr()?.peer,
            reset: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl<L> Connected<IncomingStream<'_, ResetListener<L>>> for Conn
where
    L: Listener<Addr = ConnInfo>,
    L::Io: Socket,
{
    fn connect_info(stream: IncomingStream<'_, ResetListener<L>>) -> Conn {
        stream.remote_addr().clone()
    }
}

fn spawn_serve<L>(
    listener: ResetListener<L>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    L: Listener<Addr = ConnInfo>,
    L::Io: Socket,
{
    let service = router.into_make_service_with_connect_info::<Conn>();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "proxy listener failed");
        }
    })
}

/// Binds and serves until `stop`.
pub(crate) async fn serve(
    edge: Arc<Edge>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tcp = tokio::net::TcpListener::bind(edge.cfg.listen)
        .await
        .with_context(|| format!("failed to listen on {}", edge.cfg.listen))?;
    let addr = tcp.local_addr()?;
    let tls_config = match (&edge.cfg.tls.cert, &edge.cfg.tls.key) {
        (Some(cert), Some(key)) => Some(tls::server_config(
            cert,
            key,
            edge.cfg.tls.client_ca.as_deref(),
        )?),
        _ => None,
    };
    let router = crate::forward::router(edge);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    let task = match tls_config {
        Some(config) => spawn_serve(
            ResetListener(tls::TlsListener::new(tcp, config)?),
            router,
            shutdown,
        ),
        None => spawn_serve(ResetListener(tls::PlainListener(tcp)), router, shutdown),
    };
    Ok((addr, task))
}
