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
                // Without TLS, SCRAM is the only way a password may be proved: a server (or
                // whatever answers at its address) asking for it in clear text or as md5 is refused.
                let (client, conn) = config.connect_raw(NoCleartext::new(tcp), NoTls).await.map_err(fail)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            Some(ca) => {
                config.ssl_mode(SslMode::Require);
                // SCRAM bound to this TLS session (tls-server-end-point): a password proof that
                // cannot be relayed to another server.
                if url.password_file.is_some() {
                    config.channel_binding(tokio_postgres::config::ChannelBinding::Require);
                }
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
    /// `tls-server-end-point` (RFC 5929): the server certificate's hash, with the hash of its
    /// signature algorithm (SHA-256 for anything weaker).
    fn channel_binding(&self) -> ChannelBinding {
        use sha2::Digest;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let Some(cert) = self.0.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        let oid = X509Certificate::from_der(cert.as_ref())
            .map(|(_, x)| x.signature_algorithm.algorithm.to_id_string())
            .unwrap_or_default();
        let hash = match oid.as_str() {
            // sha384WithRSAEncryption, ecdsa-with-SHA384
            "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(cert.as_ref()).to_vec(),
            // sha512WithRSAEncryption, ecdsa-with-SHA512
            "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(cert.as_ref()).to_vec(),
            _ => sha2::Sha256::digest(cert.as_ref()).to_vec(),
        };
        ChannelBinding::tls_server_end_point(hash)
    }
}

/// A plain-TCP stream to the server that watches its authentication request and fails the
/// connection if it asks for the password in clear text (AuthenticationCleartextPassword) or as
/// md5 (AuthenticationMD5Password): both hand a replayable secret to whoever answered.
struct NoCleartext {
    inner: TcpStream,
    /// The message being read: its type and length (and an authentication request's code).
    head: Vec<u8>,
    /// Bytes of the current message still to skip.
    skip: usize,
    /// Authentication is over (or refused): stop looking.
    done: bool,
}

impl NoCleartext {
    fn new(inner: TcpStream) -> Self {
        NoCleartext { inner, head: Vec::with_capacity(9), skip: 0, done: false }
    }

    /// Follows the server's messages through `bytes`; an error when it asks for a cleartext or
    /// md5 password.
    fn watch(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !self.done && !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            // The type and length, and for an authentication request ('R') its code too.
            let full = if self.head.first() == Some(&b'R') { 9 } else { 5 };
            let n = (full - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.head.len() < 5 || (self.head[0] == b'R' && self.head.len() < 9) {
                continue;
            }
            let len = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]) as usize;
            if self.head[0] == b'R' {
                match u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]) {
                    3 | 5 => {
                        self.done = true;
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "the server asked for the password in clear text or as md5 over a connection \
                             without TLS; refused (give the store's ca to use TLS, or have it use scram-sha-256)",
                        ));
                    }
                    0 => self.done = true,
                    _ => {}
                }
            } else if self.head[0] == b'E' {
                self.done = true;
            }
            // What is left of the message after the bytes of it already read (past the type byte).
            self.skip = len.saturating_sub(self.head.len() - 1);
            self.head.clear();
        }
        Ok(())
    }
}

impl AsyncRead for NoCleartext {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && !self.done
        {
            let new = buf.filled()[before..].to_vec();
            self.watch(&new)?;
        }
        polled
    }
}

impl AsyncWrite for NoCleartext {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: u32) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&8u32.to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m
    }

    #[tokio::test]
    async fn a_cleartext_or_md5_request_is_refused_scram_passes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let mut w = NoCleartext::new(tcp);
        // A notice first (skipped), then SASL (10) in two pieces, then AuthenticationOk.
        let mut notice = vec![b'N'];
        notice.extend_from_slice(&7u32.to_be_bytes());
        notice.extend_from_slice(b"abc");
        assert!(w.watch(&notice).is_ok());
        let sasl = auth(10);
        assert!(w.watch(&sasl[..3]).is_ok() && w.watch(&sasl[3..]).is_ok());
        // SASL's payload here is just the code; a real one carries mechanism names (skipped).
        assert!(w.watch(&auth(0)).is_ok() && w.done);
        for code in [3, 5] {
            let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let mut w = NoCleartext::new(tcp);
            let e = w.watch(&auth(code)).unwrap_err();
            assert!(e.to_string().contains("clear text or as md5"), "{e}");
        }
    }
}
