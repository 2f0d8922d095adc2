//! Connecting to the fleet store: the password from its file, TLS with full verification of the
//! server (its certificate chains to `ca` and names the host) when `ca` is given, and deadlines
//! on connecting so a black-holed server cannot hang a command or the shipper.
//!
//! Owns the connection only; the SQL lives in [`super::schema`], [`super::write`] and
//! [`super::read`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, NoTls, TlsConnect};

use super::{StoreError, StoreUrl};

/// How long connecting (TCP, TLS and authentication) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url`, spawning the connection's I/O task on the current tokio runtime.
pub async fn connect(url: &StoreUrl) -> Result<tokio_postgres::Client, StoreError> {
    let mut config = tokio_postgres::Config::new();
    config.user(&url.user).dbname(&url.dbname).application_name("cordon");
    if let Some(path) = &url.password_file {
        config.password(read_password(path)?);
    }
    let fail = |source| StoreError::Connect { url: url.to_string(), source };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((url.host.as_str(), url.port)))
        .await
        .map_err(|_| StoreError::Timeout { url: url.to_string(), what: "connect" })?
        .map_err(|e| StoreError::Unreachable { url: url.to_string(), source: e })?;
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        match &url.ca {
            None => {
                config.ssl_mode(SslMode::Disable);
                let (client, conn) = config.connect_raw(tcp, NoTls).await.map_err(fail)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            Some(ca) => {
                config.ssl_mode(SslMode::Require);
                let tls = RustlsConnect::new(ca, &url.host)?;
                let (client, conn) = config.connect_raw(tcp, tls).await.map_err(fail)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| StoreError::Timeout { url: url.to_string(), what: "log in" })?
}

/// The password in the first line of `path`; an unreadable or empty file is an error naming it.
pub fn read_password(path: &std::path::Path) -> Result<String, StoreError> {
    if let Some(mode) = crate::pki::files::too_open(path) {
        return Err(StoreError::PasswordFile {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "permissions {mode:04o} are too open: a password file must be readable by its owner only (chmod 600 {})",
                    path.display()
                ),
            ),
        });
    }
    let text = std::fs::read_to_string(path)
        .map_err(|source| StoreError::PasswordFile { path: path.to_owned(), source })?;
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(StoreError::PasswordFile {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(password.to_owned())
}

/// TLS to the server with rustls: the server's chain must lead to one of `ca`'s certificates
/// and name the host of the URL.
struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl RustlsConnect {
    fn new(ca: &std::path::Path, host: &str) -> Result<Self, StoreError> {
        let bad = |detail: String| StoreError::Ca { path: ca.to_owned(), detail };
        let pem = std::fs::read(ca).map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("{e:?}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_owned()).map_err(|e| bad(format!("host {host:?}: {e}")))?;
        Ok(RustlsConnect { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), name })
    }
}

impl TlsConnect<TcpStream> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        Box::pin(async move { Ok(RustlsStream(self.connector.connect(self.name, stream).await?)) })
    }
}

/// A TLS stream to the server.
struct RustlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
