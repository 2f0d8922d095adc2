//! The ingest service's protocol: one `POST /v1/rows` per batch over mTLS, a JSON body holding
//! one table's rows column by column (as [`Batch`] holds them), and the answer: how many rows
//! were accepted and why the others were refused. Parsed here and nowhere else.
//!
//! ```json
//! {"table": "edge_hour", "columns": [{"text": ["web-1"]}, {"int": [493000]}, ...]}
//! {"accepted": 4998, "refused": {"not_yours": 2}}
//! ```
//!
//! Bytes travel as lowercase hex. Both the request and the whole exchange are bounded: at most
//! [`MAX_BODY`] bytes and [`MAX_ROWS`] rows, within [`REQUEST_TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::ledger::spool::{Batch, SHIPPED, Values};

/// Largest request body.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most rows in one request; a shipper splits larger batches.
pub const MAX_ROWS: usize = 10_000;
/// One request, from connecting to the answer's last byte (the server has the same deadline
/// for reading the request and writing the rows).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The ingest service's identity: `spiffe://TD/service/cordon-store`.
pub const SERVICE: &str = "cordon-store";

/// One table's rows as they travel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireBatch {
    pub table: String,
    pub columns: Vec<WireValues>,
}

/// One column's values.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum WireValues {
    Text(Vec<String>),
    Int(Vec<i64>),
    Bytes(Vec<String>),
}

/// The service's answer to a batch it took.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub accepted: u64,
    /// Refused rows by cause ([`super::rules::Refusal::as_str`]).
    pub refused: BTreeMap<String, u64>,
}

impl WireBatch {
    pub fn of(batch: &Batch) -> WireBatch {
        let columns = batch
            .columns
            .iter()
            .map(|v| match v {
                Values::Text(v) => WireValues::Text(v.clone()),
                Values::Int(v) => WireValues::Int(v.clone()),
                Values::Bytes(v) => WireValues::Bytes(v.iter().map(|b| crate::pki::issuer::hex(b)).collect()),
            })
            .collect();
        WireBatch { table: batch.table.name.to_owned(), columns }
    }

    /// The batch it describes, or why it is malformed (an unknown table, bad hex, columns of
    /// the wrong kind or length, too many rows). The reason never quotes the body.
    pub fn into_batch(self) -> Result<Batch, &'static str> {
        let table = SHIPPED.iter().copied().find(|t| t.name == self.table).ok_or("unknown table")?;
        let mut columns = Vec::with_capacity(self.columns.len());
        for c in self.columns {
            columns.push(match c {
                WireValues::Text(v) => Values::Text(v),
                WireValues::Int(v) => Values::Int(v),
                WireValues::Bytes(v) => {
                    Values::Bytes(v.iter().map(|h| unhex(h)).collect::<Option<_>>().ok_or("bad hex")?)
                }
            });
        }
        if !super::rules::well_formed(table, &columns) {
            return Err("columns do not match the table");
        }
        let batch = Batch::from_columns(table, columns);
        if batch.len() > MAX_ROWS {
            return Err("too many rows in one request");
        }
        Ok(batch)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 1024 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Sends one batch to the ingest service at `addr` with `config` (which presents the shipping
/// identity's leaf and expects [`SERVICE`]), within [`REQUEST_TIMEOUT`].
pub async fn post(config: Arc<ClientConfig>, addr: &str, batch: &Batch) -> Result<Answer, StoreError> {
    let url = format!("https://{addr}");
    let fail = |detail: String, transient: bool| StoreError::Ingest { url: url.clone(), detail, transient };
    let body = serde_json::to_vec(&WireBatch::of(batch)).map_err(|e| fail(e.to_string(), false))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| fail(e.to_string(), true))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls_pki_types::ServerName::try_from("cordon-store.cordon.invalid")
            .map_err(|e| fail(e.to_string(), false))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}"), true))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string(), true))?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri("/v1/rows")
            .header(hyper::header::HOST, addr)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string(), false))?;
        let resp = sender.send_request(req).await.map_err(|e| fail(e.to_string(), true))?;
        let status = resp.status();
        let bytes = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| fail(e.to_string(), true))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
            return Err(fail(format!("{status}: {text}"), status.is_server_error()));
        }
        serde_json::from_slice::<Answer>(&bytes).map_err(|e| fail(format!("bad answer: {e}"), false))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| StoreError::Timeout { url: url.clone(), what: "ship a batch" })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::spool::IMPORTED_PREFIX;

    #[test]
    fn a_batch_round_trips_and_bad_bodies_are_named() {
        let b = Batch::from_columns(
            &IMPORTED_PREFIX,
            vec![
                Values::Int(vec![10]),
                Values::Bytes(vec![vec![0xab; 32]]),
                Values::Int(vec![3]),
                Values::Text(vec!["access.log".into()]),
                Values::Int(vec![5]),
            ],
        );
        let json = serde_json::to_string(&WireBatch::of(&b)).unwrap();
        let back: WireBatch = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_batch().unwrap().columns, b.columns);
        let bad: WireBatch =
            serde_json::from_str(r#"{"table":"edge_hour","columns":[{"int":[1]}]}"#).unwrap();
        assert_eq!(bad.into_batch().unwrap_err(), "columns do not match the table");
        let bad: WireBatch = serde_json::from_str(r#"{"table":"pg_authid","columns":[]}"#).unwrap();
        assert_eq!(bad.into_batch().unwrap_err(), "unknown table");
    }
}
