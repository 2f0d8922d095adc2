//! Shipping through the ingest service: which of this host's identities speaks for each row,
//! and one request per identity with that identity's leaf.
//!
//! An edge row goes with its destination's leaf when this host holds it (the service records it
//! as *seen*), else with its source's (*claimed*); a declaration with its identity's leaf; an
//! imported prefix with any. A row no identity of this host can speak for (an imported log of
//! callers this host does not serve) is not sent: the service would refuse it. Both count as
//! refused.

use std::sync::Arc;

use super::StoreError;
use super::wire::{self, Answer};
use crate::ledger::spool::{Batch, Values};
use crate::pki::{HopOffer, ServiceName, TlsStore};

/// This host's leaves and the service to send them to.
#[derive(Clone)]
pub struct Outbound {
    pub tls: Arc<TlsStore>,
    pub identities: Vec<ServiceName>,
    /// `HOST:PORT` of the ingest service.
    pub addr: String,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("addr", &self.addr).field("identities", &self.identities).finish()
    }
}

fn text<'a>(batch: &'a Batch, name: &str) -> Option<&'a [String]> {
    let i = batch.table.columns.iter().position(|c| c.name == name)?;
    match batch.columns.get(i)? {
        Values::Text(v) => Some(v),
        _ => None,
    }
}

impl Outbound {
    fn held(&self, name: &str) -> Option<usize> {
        self.identities.iter().position(|i| i.as_str() == name)
    }

    /// Which identity (an index into `identities`) speaks for row `i`, if any.
    fn speaker(&self, batch: &Batch, i: usize) -> Option<usize> {
        match batch.table.name {
            "edge_hour" => {
                let dst = text(batch, "destination")?.get(i)?;
                let src = text(batch, "source")?.get(i)?;
                self.held(dst).or_else(|| self.held(src))
            }
            "declarer" => self.held(text(batch, "identity")?.get(i)?),
            _ => (!self.identities.is_empty()).then_some(0),
        }
    }

    /// Sends `batch`, split by speaking identity and into requests of at most
    /// [`wire::MAX_ROWS`]. All or nothing for the caller: an error means some requests may have
    /// landed, and sending the batch again is safe (the store's upsert is idempotent).
    pub async fn send(&self, batch: &Batch) -> Result<Answer, StoreError> {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.identities.len()];
        let mut total = Answer::default();
        let mut nobody = 0u64;
        for i in 0..batch.len() {
            match self.speaker(batch, i) {
                Some(who) => groups[who].push(i),
                None => nobody += 1,
            }
        }
        if nobody > 0 {
            total.refused.insert("no_identity_here".into(), nobody);
        }
        let expected = ServiceName::new(wire::SERVICE).map_err(|e| StoreError::Ingest {
            url: self.addr.clone(),
            detail: e.to_string(),
            transient: false,
        })?;
        let backend = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        for (who, rows) in groups.iter().enumerate() {
            for chunk in rows.chunks(wire::MAX_ROWS) {
                let identity = &self.identities[who];
                let config = self
                    .tls
                    .client_config(identity, &expected, backend, HopOffer::None)
                    .ok_or_else(|| StoreError::Ingest {
                        url: format!("https://{}", self.addr),
                        detail: format!("no certificate for {identity} yet"),
                        transient: true,
                    })?;
                let answer = wire::post(config, &self.addr, &super::rules::select(batch, chunk)).await?;
                total.accepted += answer.accepted;
                for (cause, n) in answer.refused {
                    *total.refused.entry(cause).or_default() += n;
                }
            }
        }
        Ok(total)
    }
}

/// Requests `cordon ship --to https://` keeps in flight: while the service and the store work on
/// one batch, the next is encoded and its connection made (one at a time, the round trip bounded
/// the rate, not the CPU; see docs/fleet.md, "The ingest rate").
const IN_FLIGHT: usize = 2;

/// `cordon ship --db FILE --to https://ADDR --config cordon.toml`: every row of the ledger file
/// through the ingest service, as this host, `IN_FLIGHT` batches at a time. Returns what was
/// sent and the service's answers; the first failure ends it (shipping again is safe).
pub fn ship_file(
    db: &std::path::Path,
    out: &Outbound,
    batch_rows: usize,
) -> Result<(super::Shipped, Answer), StoreError> {
    crate::ledger::spool::check(db)?;
    super::block_on(async {
        let mut shipped = super::Shipped::default();
        let mut total = Answer::default();
        let mut sending = tokio::task::JoinSet::new();
        let mut add = |done: Result<Result<Answer, StoreError>, tokio::task::JoinError>| {
            let answer = done.map_err(|e| StoreError::Runtime(std::io::Error::other(e.to_string())))??;
            shipped.rows += answer.accepted;
            shipped.batches += 1;
            total.accepted += answer.accepted;
            for (cause, n) in answer.refused {
                *total.refused.entry(cause).or_default() += n;
            }
            Ok::<_, StoreError>(())
        };
        let read = super::each_batch(db, batch_rows.clamp(1, wire::MAX_ROWS), async |batch| {
            if sending.len() >= IN_FLIGHT
                && let Some(done) = sending.join_next().await
            {
                add(done)?;
            }
            let out = out.clone();
            sending.spawn(async move { out.send(&batch).await });
            Ok(())
        })
        .await;
        // What is under way lands (or fails) before the answer: nothing is left running.
        let mut landed = Ok(());
        while let Some(done) = sending.join_next().await {
            if let Err(e) = add(done)
                && landed.is_ok()
            {
                landed = Err(e);
            }
        }
        read?;
        landed?;
        Ok((shipped, total))
    })?
}
