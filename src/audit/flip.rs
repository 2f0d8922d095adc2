//! The record of a `mode` flip, made from what the flip itself returned
//! ([`crate::policy::FlipOutcome`]): the service's mode before and after, the preflight's verdict
//! and every reason, `--force`, the policy's version before and after.

use std::path::Path;

use super::{Action, FlipCheck, Record, RecordStatus};
use crate::policy::FlipOutcome;

/// The audit record of a flip: `Success` when the policy now says what was asked, `Refused` when
/// the preflight stopped it.
pub fn flip_record(o: &FlipOutcome, policy: &Path) -> Record {
    let preflight = o.readiness.as_ref().map(|r| FlipCheck {
        ready: r.ready,
        reasons: crate::policy::overridden(r),
        evidence: o.evidence_from.clone().unwrap_or_default(),
    });
    let status = if o.flipped { RecordStatus::Success } else { RecordStatus::Refused };
    Record::new(
        Action::ModeFlip {
            service: o.service.clone(),
            from: o.from.to_string(),
            to: o.to.to_string(),
            preflight,
            forced: o.forced,
            policy: super::record::shown_path(policy),
            policy_before: o.policy_before.clone(),
            policy_after: o.flipped.then(|| o.policy_after.clone()),
        },
        status,
    )
}
