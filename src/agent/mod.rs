//! The agent: wires config, discovery, policy, TLS, proxies, recorder and admin together.

pub mod config;
