//! The demo's attacker: someone who copied cache's certificate and key off the cache host dials
//! db's inbound by hand over mTLS, without going through any configured cordon upstream.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::world::{HOSTS, TRUST_DOMAIN, World};
use crate::pki::{HopOffer, TlsSource};
use crate::pki::{ServiceName, TlsStore, TrustDomain, server_name};

/// Sends `request` to `to` (the inbound of `service`) from `identity`'s host, presenting
/// `identity`'s certificate; returns the reply, empty when refused.
pub async fn dial(
    world: &World,
    identity: &str,
    service: &str,
    to: SocketAddr,
    request: &str,
) -> anyhow::Result<String> {
    let id = ServiceName::new(identity)?;
    let server = ServiceName::new(service)?;
    let source = TlsSource::Files { ca: world.path("ca/ca.pem"), dir: world.path("tls") };
    let tls = TlsStore::load(&source, &TrustDomain::new(TRUST_DOMAIN)?, std::slice::from_ref(&id))?;
    let config = tls
        .client_config(&id, &server, to, HopOffer::None)
        .context("no client config for the stolen identity")?;
    let host = HOSTS.iter().find(|h| h.name == identity).context("no such demo host")?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(host.ip.into(), 0))?;
    let talk = async {
        let tcp = socket.connect(to).await?;
        let mut stream = tokio_rustls::TlsConnector::from(config).connect(server_name(&server), tcp).await?;
        stream.write_all(request.as_bytes()).await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        // A refused connection ends with an alert or a reset: an empty answer, not an error.
        let _ = stream.read_to_end(&mut reply).await;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), talk).await {
        Ok(Ok(reply)) => Ok(reply),
        // Refused during the handshake.
        Ok(Err(_)) => Ok(String::new()),
        Err(_) => anyhow::bail!("{identity} -> {service} by hand: no answer within 10 s"),
    }
}
