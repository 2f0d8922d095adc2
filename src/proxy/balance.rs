//! Choosing a backend: weighted round robin over the discovery snapshot, with the rest of the
//! backends as failover order.

use std::sync::atomic::{AtomicU64, Ordering};

use cordon_discovery::Backend;

/// Per-upstream round robin state. Weights come from discovery (absent = 1; 0 = only when every
/// backend has weight 0).
#[derive(Debug, Default)]
pub struct Balancer {
    next: AtomicU64,
}

impl Balancer {
    /// The order to try `backends` in for one connection: the first by weighted round robin, then
    /// the others in turn.
    pub fn order(&self, backends: &[Backend]) -> Vec<usize> {
        let n = backends.len();
        if n == 0 {
            return Vec::new();
        }
        let weight = |b: &Backend| u64::from(b.weight.unwrap_or(1));
        let total: u64 = backends.iter().map(weight).sum();
        let tick = self.next.fetch_add(1, Ordering::Relaxed);
        let first = if total == 0 {
            (tick % n as u64) as usize
        } else {
            let mut slot = tick % total;
            backends
                .iter()
                .position(|b| {
                    let w = weight(b);
                    if slot < w {
                        true
                    } else {
                        slot -= w;
                        false
                    }
                })
                .unwrap_or(0)
        };
        // Failover skips weight-0 backends unless nothing else is left.
        let mut order: Vec<usize> = (0..n).map(|i| (first + i) % n).collect();
        if total > 0 {
            order.retain(|&i| weight(&backends[i]) > 0);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16, weight: Option<u32>) -> Backend {
        let json = serde_json::json!({"host": "127.0.0.1", "port": port, "weight": weight});
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn spreads_by_weight_and_fails_over_to_the_rest() {
        let backends = vec![backend(1, Some(3)), backend(2, Some(1)), backend(3, Some(0))];
        let b = Balancer::default();
        let mut firsts = [0; 3];
        for _ in 0..400 {
            let order = b.order(&backends);
            assert_eq!(order.len(), 2, "weight 0 is never tried while others exist");
            firsts[order[0]] += 1;
        }
        assert_eq!(firsts, [300, 100, 0]);
    }

    #[test]
    fn unweighted_is_plain_round_robin() {
        let backends = vec![backend(1, None), backend(2, None)];
        let b = Balancer::default();
        assert_eq!(b.order(&backends), vec![0, 1]);
        assert_eq!(b.order(&backends), vec![1, 0]);
        assert!(b.order(&[]).is_empty());
    }
}
