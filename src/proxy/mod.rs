//! The data plane: outbound and inbound proxies.
