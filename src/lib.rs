//! cordon: mutual-TLS segmentation for SmartStack-style fleets, rolled out learn-first.
//!
//! Modules, one per concern: [`base`] (the shared vocabulary), [`pki`] (identities, CA, TLS), [`policy`] (intentions and modes),
//! [`proxy`] (the data plane), [`ledger`] (the recorded graph), [`graph`] (review), [`agent`]
//! (wiring) and [`cli`]. The data plane never calls SQLite directly.
// Denied everywhere; `agent::limits` alone allows it, for setrlimit (see there).
#![deny(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod base;
pub mod cli;
pub mod demo;
pub mod exposition;
pub mod graph;
pub mod ledger;
pub mod lockdown;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod store;
